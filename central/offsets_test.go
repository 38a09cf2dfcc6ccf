package central

import "testing"

func TestClockOffsetsResolve(t *testing.T) {
	type step struct {
		measured int64
		want     int64
		changed  bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first report sets the offset", []step{{3, 3, true}, {3, 3, false}}},
		{"a correct clock stays at 0", []step{{0, 0, false}, {0, 0, false}}},
		// Late reports and replays keep the node's offset, so they count
		// for their own second and the node's next report keeps its slot.
		{"one late report", []step{{0, 0, false}, {1, 0, false}, {0, 0, false}}},
		{"a spell of late reports", []step{{0, 0, false}, {1, 0, false}, {1, 0, false}, {0, 0, false}}},
		{"a replay sent twice", []step{{0, 0, false}, {3, 0, false}, {3, 0, false}, {0, 0, false}}},
		// A clock that stepped back shows the larger offset in every report:
		// it is adopted once offsetWindow reports showed it.
		{"clock stepped back", []step{{0, 0, false}, {2, 0, false}, {2, 0, false}, {2, 0, false}, {2, 0, false}, {2, 2, true}, {2, 2, false}}},
		// Nothing makes an offset too small, so a smaller one is adopted at
		// once.
		{"clock stepped forward", []step{{0, 0, false}, {-3, -3, true}, {-3, -3, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var offsets clockOffsets
			for i, s := range tt.steps {
				got, _, changed, _ := offsets.resolve("edge-1", s.measured)
				if got != s.want || changed != s.changed {
					t.Errorf("report %d with arrival offset %d: offset %d, changed %v; want %d, %v", i+1, s.measured, got, changed, s.want, s.changed)
				}
			}
		})
	}
}

func TestClockOffsetsAreKeptPerNode(t *testing.T) {
	var offsets clockOffsets
	offsets.resolve("edge-1", 2)
	if got, _, _, known := offsets.resolve("edge-2", 0); got != 0 || known {
		t.Errorf("edge-2's first report: offset %d, known %v; want 0, false", got, known)
	}
	if got, _, _, _ := offsets.resolve("edge-1", 2); got != 2 {
		t.Errorf("edge-1's second report: offset %d, want 2", got)
	}
}
