package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// Monitor returns the leader's monitor data. It returns an error matching
// raftnode.ErrNotLeader on a central that is not allocating.
type Monitor interface {
	Monitor(q quota.MonitorQuery) (map[int64]any, error)
}

// parseSlot reads an optional slot query parameter; empty is 0.
func parseSlot(field, value string) (int64, error) {
	if value == "" {
		return 0, nil
	}
	slot, err := strconv.ParseInt(value, 10, 64)
	if err != nil || slot < 0 {
		return 0, fmt.Errorf("%w: %s is %q; it must be a slot number (unix seconds)", quota.ErrInvalid, field, value)
	}
	return slot, nil
}

// monitor handles GET /v1/monitor/{subject}?start_slot=&end_slot=&service=&user=.
// Only the leader has the data, so followers forward.
func (s *Server) monitor(c echo.Context) error {
	q := quota.MonitorQuery{Subject: c.Param("subject"), Service: c.QueryParam("service"), User: c.QueryParam("user")}
	var err error
	if q.Start, err = parseSlot("start_slot", c.QueryParam("start_slot")); err != nil {
		return err
	}
	if q.End, err = parseSlot("end_slot", c.QueryParam("end_slot")); err != nil {
		return err
	}
	data, err := s.monitorData(q)
	if errors.Is(err, raftnode.ErrNotLeader) {
		return s.forward(c, nil)
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, data)
}

func (s *Server) monitorData(q quota.MonitorQuery) (map[string]any, error) {
	if s.cfg.Monitor == nil || !s.cfg.Cluster.IsLeader() {
		return nil, raftnode.ErrNotLeader
	}
	bySlot, err := s.cfg.Monitor.Monitor(q)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, len(bySlot))
	for slot, v := range bySlot {
		out[strconv.FormatInt(slot, 10)] = v
	}
	return out, nil
}
