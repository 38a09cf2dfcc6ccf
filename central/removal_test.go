package central

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/api"
)

func TestRemovalNoticeSurvivesReload(t *testing.T) {
	dir := t.TempDir()
	r, err := loadRemoval(dir)
	if err != nil {
		t.Fatalf("loadRemoval of an empty directory: %v", err)
	}
	if _, removed := r.Removed(); removed {
		t.Fatal("a new data directory reads as removed")
	}
	at := time.Date(2026, 12, 5, 1, 2, 3, 0, time.UTC)
	if err := r.MarkRemoved(api.RemovalNotice{NodeID: "c3", Leader: "c1", At: at}); err != nil {
		t.Fatalf("MarkRemoved: %v", err)
	}

	again, err := loadRemoval(dir)
	if err != nil {
		t.Fatalf("loadRemoval after MarkRemoved: %v", err)
	}
	notice, removed := again.Removed()
	if !removed || notice.NodeID != "c3" || notice.Leader != "c1" || !notice.At.Equal(at) {
		t.Errorf("reloaded notice %+v, removed %v; want c3 removed by c1 at %s", notice, removed, at)
	}
}

func TestInvalidRemovalNoticeStopsStart(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, removalFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}

	_, err := loadRemoval(dir)

	if err == nil || !strings.Contains(err.Error(), "not valid JSON") || !strings.Contains(err.Error(), "delete its data directory") {
		t.Errorf("loadRemoval of a damaged notice: error %v, want one naming the file and what to do", err)
	}
}
