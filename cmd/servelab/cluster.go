package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vklogrus "github.com/virtual-kubelet/virtual-kubelet/log/logrus"

	"servelab/internal/kubebin"
	"servelab/real/cluster"
)

// defaultClusterDir is where `servelab cluster up` keeps a cluster by default: the
// user's state directory ($XDG_STATE_HOME, else ~/.local/state) under servelab/cluster.
func defaultClusterDir() string {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return filepath.Join(os.TempDir(), "servelab-cluster")
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "servelab", "cluster")
}

func newClusterCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cluster",
		Short: "A Kubernetes cluster on this machine whose pods run as servelab processes",
		Long: `servelab cluster up starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(` + kubebin.Version + `, built by hack/k8s/build.sh) on 127.0.0.1 and one node, "` + cluster.NodeName + `", made with
virtual-kubelet, whose pods run as local processes of the servelab binary: each pod gets its own
loopback address (127.0.0.2, 127.0.0.3, ...) as its pod IP, its ports bind there, and readiness and
liveness probes, restarts, kubectl logs, port-forward and deletion work. The node runs processes,
not containers: a container's image must be servelab's (servelab, REGISTRY/ORG/servelab:TAG) and its
command the servelab binary; any other image leaves the pod with reason UnsupportedImage. A real
cluster runs the same objects from the servelab container image instead.

servelab cluster down stops everything up started, pods' processes included.`,
	}
	c.AddCommand(newClusterUpCmd(), newClusterDownCmd(), newClusterNodeCmd())
	return c
}

func newClusterUpCmd() *cobra.Command {
	var dir, binDir, servelabBin string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the local cluster in the background and write its kubeconfig",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if binDir == "" {
				d, err := kubebin.Dir(kubebin.Etcd, kubebin.APIServer, kubebin.ControllerManager, kubebin.Scheduler)
				if err != nil {
					return err
				}
				binDir = d
			}
			if servelabBin == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("--servelab-bin: %w", err)
				}
				servelabBin = exe
			}
			abs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			t0 := time.Now()
			st, err := cluster.Up(cmd.Context(), cluster.Options{Dir: abs, BinDir: binDir, ServelabBin: servelabBin, Timeout: timeout, Log: out})
			if err != nil {
				return err
			}
			kc := cluster.KubeconfigPath(abs)
			fmt.Fprintf(out, "\ncluster up in %.1f s: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, node %s (pods run as servelab processes, not containers) and servelab's LLMService controller (CRD installed)\n", time.Since(t0).Seconds(), cluster.NodeName)
			fmt.Fprintf(out, "  apiserver   %s\n  kubeconfig  %s (context %s)\n  logs        %s\n\n", st.Server, kc, cluster.ContextName, filepath.Dir(cluster.LogPath(abs, "node")))
			fmt.Fprintf(out, "use it:\n  export KUBECONFIG=%s\n", kc)
			if _, err := exec.LookPath("kubectl"); err == nil {
				fmt.Fprintf(out, "  kubectl get nodes\n")
			} else {
				fmt.Fprintf(out, "  (no kubectl on PATH) servelab's Kubernetes commands read $KUBECONFIG, e.g. servelab deploy\n")
			}
			fmt.Fprintf(out, "stop it:\n  servelab cluster down --dir %s\n", abs)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dir, "dir", defaultClusterDir(), "the cluster's directory: kubeconfig, PKI, etcd data, logs/, pods/ (default: $XDG_STATE_HOME or ~/.local/state, under servelab/cluster)")
	fl.StringVar(&binDir, "bin-dir", "", "directory holding etcd, kube-apiserver, kube-controller-manager and kube-scheduler (default: $"+kubebin.EnvDir+", $KUBEBUILDER_ASSETS, else hack/k8s/build.sh's cache "+kubebin.CacheDir()+")")
	fl.StringVar(&servelabBin, "servelab-bin", "", "the servelab binary the node and pods run (default: this one)")
	fl.DurationVar(&timeout, "timeout", 3*time.Minute, "give up (and stop what started) when the cluster is not ready by then")
	return cmd
}

func newClusterDownCmd() *cobra.Command {
	var dir string
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the local cluster and every pod process it started",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			abs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			n, err := cluster.Down(abs, grace)
			if err != nil {
				return err
			}
			if n == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "no cluster running in %s\n", abs)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stopped %d processes of the cluster in %s (its files stay; up again reuses them)\n", n, abs)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultClusterDir(), "the cluster's directory (as given to up)")
	cmd.Flags().DurationVar(&grace, "grace", 10*time.Second, "how long processes get after SIGTERM before SIGKILL")
	return cmd
}

// newClusterNodeCmd is the node process `cluster up` starts in the background.
func newClusterNodeCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "node",
		Short:  "Run the cluster's virtual-kubelet node (started by cluster up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--dir is required")
			}
			logger := logrus.New()
			logger.SetOutput(cmd.ErrOrStderr())
			logger.SetLevel(logrus.InfoLevel)
			vklog.L = vklogrus.FromLogrus(logrus.NewEntry(logger))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return cluster.RunNode(ctx, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the cluster's directory")
	return cmd
}
