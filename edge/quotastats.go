package edge

// quotaSlots returns how many distinct slots have quotas cached for at
// least one service, and the newest of them (0 when none).
func (t *Throttler) quotaSlots() (count int, newest int64) {
	seen := make(map[int64]struct{})
	for _, entry := range *t.quotas.services.Load() {
		for _, cached := range entry.cache.Load().slots {
			seen[cached.slot] = struct{}{}
			newest = max(newest, cached.slot)
		}
	}
	return len(seen), newest
}
