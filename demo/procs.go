package demo

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// reservedPorts are the fixed ports of make run, scripts/cluster.sh,
// scripts/load.sh and the agent's default listener. The demo never takes
// them, so it can run beside any of those.
var reservedPorts = []int{7001, 7002, 7003, 7946, 7947, 7948, 8081, 8082, 8083, 9001, 9002, 9003, 9081, 9082, 9083, 9090, 9946, 9947, 9948}

// freePort returns a port on 127.0.0.1 that is free for both TCP and UDP
// at the time of the call, because memberlist binds both on one number.
func freePort() (int, error) {
	for range 50 {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
		}
		port := tcp.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		_ = tcp.Close()
		if err != nil {
			continue
		}
		_ = udp.Close()
		if !slices.Contains(reservedPorts, port) {
			return port, nil
		}
	}
	return 0, errors.New("no port on 127.0.0.1 was free for both TCP and UDP after 50 tries")
}

// freePorts returns n distinct free ports.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for len(ports) < n {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
	}
	return ports, nil
}

// process is one central or agent that the demo started.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string

	mu     sync.Mutex
	exited bool
	done   chan struct{}
}

// startProcess starts binary with args, its output appended to a log file
// under dir.
func startProcess(dir, name, binary string, args ...string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating the log of %s: %w", name, err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A process group of its own keeps a Ctrl-C in the terminal from
	// reaching the children before the demo stops them in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, binary, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		p.mu.Lock()
		p.exited = true
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process ID.
func (p *process) pid() int { return p.cmd.Process.Pid }

// running reports whether the process has not exited.
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.exited
}

// kill sends SIGKILL and waits for the process to exit.
func (p *process) kill() {
	if p.running() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// stop sends SIGTERM, and SIGKILL when the process has not exited after
// grace.
func (p *process) stop(grace time.Duration) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}
