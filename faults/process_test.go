//go:build linux

package faults

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// reservedPorts are the fixed ports of make run, scripts/cluster.sh,
// scripts/load.sh and the agent's default listener. The tests never take
// them, so they can run beside any of those.
var reservedPorts = []int{7001, 7002, 7003, 7946, 7947, 7948, 8081, 8082, 8083,
	9001, 9002, 9003, 9081, 9082, 9083, 9090, 9946, 9947, 9948}

// freePorts returns n distinct ports of 127.0.0.1 that were free for both
// TCP and UDP when it checked, because memberlist binds both on one
// number. The kernel picks each one.
//
// NOTE: the ports are released before the processes bind them, so another
// process can take one in between. The central or agent then exits with
// "address already in use" in its log.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt >= 50*n {
			return nil, fmt.Errorf("found only %d of %d ports free for TCP and UDP on 127.0.0.1", len(ports), n)
		}
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
		}
		port := tcp.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		_ = tcp.Close()
		if err != nil {
			continue
		}
		_ = udp.Close()
		if !slices.Contains(reservedPorts, port) && !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
	}
	return ports, nil
}

// process is one run of a central or an agent that a test started. Its
// output is appended to a log file that every run of the same name
// shares.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
}

// startProcess starts binary with args. The process gets its own process
// group, so a Ctrl-C in the terminal reaches only the test, and SIGKILL
// when the test process dies, so no central outlives a killed test.
func startProcess(logDir, name, binary string, args ...string) (*process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the log of %s: %w", name, err)
	}
	fmt.Fprintf(logFile, "=== faults: %s starting %s %s\n", time.Now().Format(time.RFC3339Nano), binary, strings.Join(args, " "))
	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, binary, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		// The exit status does not matter: a killed central exits with an
		// error, and the tests check what the others do.
		_ = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig unless the process has exited. os.Process returns
// os.ErrProcessDone once Wait has reaped the process, so the signal never
// reaches another process that took over the PID.
func (p *process) signal(sig syscall.Signal) error {
	if !p.running() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending %v to %s (PID %d): %w", sig, p.name, p.pid(), err)
	}
	return nil
}

// wait waits at most timeout for the process to exit and reports whether
// it did.
func (p *process) wait(timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		return false
	}
}

// stop sends SIGTERM, and SIGKILL when the process has not exited after
// grace. It returns once the process has exited.
func (p *process) stop(grace time.Duration) {
	if err := p.signal(syscall.SIGTERM); err == nil && p.wait(grace) {
		return
	}
	_ = p.signal(syscall.SIGKILL)
	<-p.done
}
