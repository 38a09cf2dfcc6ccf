package central

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/throttlecentral/throttle-central/api"
)

// removalFile is the file in the data directory that holds the leader's
// notice that this central was removed. Deleting the data directory, as a
// removed central must before it joins again, deletes it too.
const removalFile = "removed.json"

// removal keeps the removal notice in memory and in removalFile.
type removal struct {
	path string

	mu     sync.Mutex
	notice *api.RemovalNotice
}

var _ api.Removal = (*removal)(nil)

// loadRemoval reads the notice a previous run recorded in dataDir, if any.
func loadRemoval(dataDir string) (*removal, error) {
	r := &removal{path: filepath.Join(dataDir, removalFile)}
	data, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the removal notice: %w", err)
	}
	var notice api.RemovalNotice
	if err := json.Unmarshal(data, &notice); err != nil {
		return nil, fmt.Errorf("the removal notice %s is not valid JSON (%v); this central was removed from its cluster: delete its data directory and start it with --join", r.path, err)
	}
	r.notice = &notice
	return r, nil
}

// MarkRemoved records the notice, first in the file, so that a restart
// keeps it.
func (r *removal) MarkRemoved(notice api.RemovalNotice) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	notice.At = notice.At.UTC()
	data, err := json.Marshal(notice)
	if err != nil {
		return err
	}
	if err := writeFileSynced(r.path, data); err != nil {
		return fmt.Errorf("writing the removal notice: %w", err)
	}
	r.notice = &notice
	return nil
}

// writeFileSynced replaces the file at path with data: it writes and syncs
// a temporary file, renames it, and syncs the directory, so a crash leaves
// either the old file or the new one.
func writeFileSynced(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// Removed returns the notice, if there is one.
func (r *removal) Removed() (api.RemovalNotice, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.notice == nil {
		return api.RemovalNotice{}, false
	}
	return *r.notice, true
}
