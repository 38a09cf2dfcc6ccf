// Package faults holds fault tests of a three-central cluster. They kill
// the leader with SIGKILL under reports from 20 edge nodes, restart every
// central at once, cut the leader off by a network partition, and hand
// leadership over during a stream of limit writes. They also run edge
// nodes with skewed clocks and replay reports.
//
// The tests build throttle-central and throttle-agent into a temporary
// directory and start real processes on 127.0.0.1 with ports the kernel
// picks. The partition test runs each central in a network namespace of
// its own. It needs root, `ip netns` and curl, and skips with a message
// where they are missing. `go test -short` skips every test. The flag
// -long selects the long forms, which scripts/faults/run.sh runs and whose
// figures docs/benchmarks.md records. The package has no code outside its
// tests, which run on Linux only.
package faults
