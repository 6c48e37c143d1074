package controller

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"servelab/internal/k8stest"
	"servelab/internal/kubebin"
)

// startControllerManager runs kube-controller-manager's Deployment, ReplicaSet and garbage
// collector controllers against env until the test ends (no scheduler or kubelet: pods stay
// Pending).
func startControllerManager(t *testing.T, env *k8stest.Env) {
	t.Helper()
	bin := kubebin.ForTest(t, kubebin.ControllerManager)
	c := env.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "kube-controller-manager.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, kubebin.ControllerManager),
		"--kubeconfig="+kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--controllers=deployment-controller,replicaset-controller,garbage-collector-controller")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		if t.Failed() {
			data, _ := os.ReadFile(log.Name())
			if len(data) > 4000 {
				data = data[len(data)-4000:]
			}
			t.Logf("kube-controller-manager's log, end:\n%s", data)
		}
	})
}

// TestDeletionCollectsOwnedObjects: with kube-controller-manager's garbage collector
// running, deleting an LLMService deletes everything the controller created for it,
// through the owner references alone.
func TestDeletionCollectsOwnedObjects(t *testing.T) {
	env := k8stest.Start(t)
	startControllerManager(t, env)
	ctx := context.Background()
	r, _ := newReconciler(env)
	create(t, env, newService("gc", nil))
	reconcileOnce(t, r, "gc")
	// The Deployment controller is running: the engine Deployment gets its ReplicaSet.
	waitFor(t, "a ReplicaSet for gc-engine", 2*time.Minute, func() (bool, error) {
		var rs appsv1.ReplicaSetList
		if err := env.Client.List(ctx, &rs, client.InNamespace(ns), client.MatchingLabels(selectorLabels("gc", ComponentEngine))); err != nil {
			return false, err
		}
		return len(rs.Items) == 1, nil
	})
	if n := len(owned(t, env, "gc")); n != 7 {
		t.Fatalf("%d owned objects before deletion, want 7", n)
	}
	if err := env.Client.Delete(ctx, getService(t, env, "gc"), client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	reconcileOnce(t, r, "gc")
	waitFor(t, "the garbage collector deleting gc's objects", 2*time.Minute, func() (bool, error) {
		return len(owned(t, env, "gc")) == 0, nil
	})
	waitFor(t, "the garbage collector deleting gc-engine's ReplicaSet", 2*time.Minute, func() (bool, error) {
		var rs appsv1.ReplicaSetList
		err := env.Client.List(ctx, &rs, client.InNamespace(ns), client.MatchingLabels(selectorLabels("gc", ComponentEngine)))
		return err == nil && len(rs.Items) == 0, err
	})
}
