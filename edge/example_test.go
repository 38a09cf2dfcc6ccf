package edge_test

import (
	"context"
	"errors"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/throttlecentral/throttle-central/edge"
)

// An HTTP server that checks each request against user alice's quota in
// service front and counts the bytes it sent.
func ExampleClient() {
	client, err := edge.NewClient(edge.ClientOptions{
		NodeID:   "edge-1", // unique in the fleet
		Centrals: []string{"http://127.0.0.1:8081", "http://127.0.0.1:8082", "http://127.0.0.1:8083"},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := client.Start(); err != nil { // the report loop
		log.Fatal(err)
	}

	handler := func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("X-User")
		if err := client.Throttle("front", user); err != nil {
			// err wraps edge.ErrRejected and names the resource, quota and
			// consumption.
			http.Error(w, err.Error(), http.StatusTooManyRequests)
			return
		}
		body := []byte("hello\n")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
		client.Consume("front", user, map[string]float64{"traffic_down": float64(len(body))})
	}
	server := &http.Server{Addr: "127.0.0.1:8080", Handler: http.HandlerFunc(handler)}
	if err := server.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Print(err)
	}

	// After the server has stopped: the final report, then leave gossip.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		log.Print(err)
	}
}
