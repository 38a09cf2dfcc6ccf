// Package e2e holds end-to-end tests that build the throttle-central
// binary, start a three-central cluster on 127.0.0.1 with
// scripts/cluster.sh, and drive it over the HTTP API. The package has no
// code outside its tests. `go test -short` skips the tests.
package e2e
