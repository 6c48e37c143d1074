package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MarkerEnv is set, to the cluster's absolute directory, in the environment of every
// process the cluster starts: the control plane, the node and (passed on by the node)
// every pod's process and whatever those start. `down` finds what to stop by it, in
// /proc, so nothing survives even when a pid file is stale or the node died first.
const MarkerEnv = "SERVELAB_CLUSTER_DIR"

// startDetached starts a long-running component in its own process group (so it
// survives the command that started it, and a terminal's ^C does not reach it), stdin
// from /dev/null and stdout/stderr appended to logPath, and writes its pid to pidPath.
// A goroutine reaps it when it exits while this process still lives.
func startDetached(bin string, args []string, env []string, logPath, pidPath string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	go cmd.Wait() //nolint:errcheck // reaps; the exit shows in the log and in readiness
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	return cmd, nil
}

// withMarker returns env with MarkerEnv set to dir (replacing any inherited value: a pod
// of one cluster that starts another cluster marks the new one's processes with its own).
func withMarker(env []string, dir string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, MarkerEnv+"=") {
			out = append(out, kv)
		}
	}
	return append(out, MarkerEnv+"="+dir)
}

// Processes returns the pids of the live processes carrying the cluster's marker for dir
// (zombies have no environment and are not listed). Processes of other users that this
// one cannot read are not seen.
func Processes(dir string) []int {
	want := []byte(MarkerEnv + "=" + dir)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, want) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// otherClusters returns the directories of the clusters, other than dir, that have live
// processes on this machine (those this user can see).
func otherClusters(dir string) []string {
	prefix := []byte(MarkerEnv + "=")
	seen := map[string]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if d, ok := bytes.CutPrefix(kv, prefix); ok && string(d) != dir {
				seen[string(d)] = true
			}
		}
	}
	var out []string
	for d := range seen {
		out = append(out, d)
	}
	return out
}

// Alive reports whether pid is a live process (not a zombie).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself hold ") ".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// terminate sends SIGTERM to every pid (and its process group when it leads one), waits
// up to grace for all to exit, then SIGKILLs what is left and waits for that too. It
// returns the pids that were still alive at the end (none unless they could not be
// killed).
func terminate(pids []int, grace time.Duration) []int {
	signalAll := func(sig syscall.Signal) {
		for _, pid := range pids {
			if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
				syscall.Kill(-pid, sig)
			}
			syscall.Kill(pid, sig)
		}
	}
	alive := func() []int {
		var left []int
		for _, pid := range pids {
			if Alive(pid) {
				left = append(left, pid)
			}
		}
		return left
	}
	waitAll := func(d time.Duration) []int {
		deadline := time.Now().Add(d)
		for {
			left := alive()
			if len(left) == 0 || time.Now().After(deadline) {
				return left
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	signalAll(syscall.SIGTERM)
	left := waitAll(grace)
	if len(left) == 0 {
		return nil
	}
	pids = left
	signalAll(syscall.SIGKILL)
	return waitAll(10 * time.Second)
}

// readPid reads a pid file written by startDetached.
func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, errors.New(path + ": not a pid")
	}
	return pid, nil
}
