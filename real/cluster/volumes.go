package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// A process has no mount namespace: the node materialises each of a pod's volumes as a
// directory on the host (under the pod's directory; a hostPath volume is its own path)
// and rewrites the container's command, args, env values and workingDir where they name
// a path under a volumeMount's mountPath, to the same path under that directory.
// Supported: emptyDir, configMap, secret, downwardAPI, hostPath and projected (with
// serviceAccountToken, configMap, secret and downwardAPI sources). Contents are written
// once, when the pod starts.

// saMountPath is where Kubernetes mounts a pod's service-account credentials.
const saMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// unsupportedVolume says why a pod's volumes cannot be given to a process ("" if they can).
func unsupportedVolume(pod *corev1.Pod) string {
	for _, v := range pod.Spec.Volumes {
		s := v.VolumeSource
		if s.EmptyDir == nil && s.ConfigMap == nil && s.Secret == nil && s.DownwardAPI == nil && s.HostPath == nil && s.Projected == nil {
			return fmt.Sprintf("volume %q: node %s runs pods as processes and supports emptyDir, configMap, secret, downwardAPI, hostPath and projected volumes only", v.Name, NodeName)
		}
	}
	return ""
}

// prepareVolumes writes every volume of the pod and returns each one's host directory.
func (pr *podRun) prepareVolumes(ctx context.Context) (map[string]string, error) {
	pr.mu.Lock()
	pod := pr.pod.DeepCopy() // UpdatePod may change labels and annotations meanwhile
	pr.mu.Unlock()
	dirs := map[string]string{}
	var refreshers []func() // started once every volume is in place
	for _, v := range pod.Spec.Volumes {
		s := v.VolumeSource
		if s.HostPath != nil {
			if err := checkHostPath(s.HostPath); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
			dirs[v.Name] = s.HostPath.Path
			continue
		}
		dir := filepath.Join(pr.dir, "volumes", v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		dirs[v.Name] = dir
		var err error
		switch {
		case s.ConfigMap != nil:
			err = pr.writeConfigMap(ctx, dir, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional)
		case s.Secret != nil:
			err = pr.writeSecret(ctx, dir, s.Secret.SecretName, s.Secret.Items, s.Secret.Optional)
		case s.DownwardAPI != nil:
			err = pr.writeDownward(ctx, pod, dir, s.DownwardAPI.Items)
		case s.Projected != nil:
			for _, src := range s.Projected.Sources {
				switch {
				case src.ConfigMap != nil:
					err = pr.writeConfigMap(ctx, dir, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
				case src.Secret != nil:
					err = pr.writeSecret(ctx, dir, src.Secret.Name, src.Secret.Items, src.Secret.Optional)
				case src.DownwardAPI != nil:
					err = pr.writeDownward(ctx, pod, dir, src.DownwardAPI.Items)
				case src.ServiceAccountToken != nil:
					var refresh func()
					refresh, err = pr.writeToken(ctx, filepath.Join(dir, src.ServiceAccountToken.Path), src.ServiceAccountToken)
					refreshers = append(refreshers, refresh)
				}
				if err != nil {
					break
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	for _, r := range refreshers {
		go r()
	}
	return dirs, nil
}

func writeItems(dir string, data map[string][]byte, items []corev1.KeyToPath, optional bool) error {
	if len(items) == 0 {
		for k, v := range data {
			if err := writeFile(dir, k, v); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return fmt.Errorf("no key %q", it.Key)
		}
		if err := writeFile(dir, it.Path, v); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(dir, rel string, data []byte) error {
	p := filepath.Join(dir, filepath.Clean("/"+rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

func (pr *podRun) writeConfigMap(ctx context.Context, dir, name string, items []corev1.KeyToPath, optional *bool) error {
	opt := optional != nil && *optional
	if pr.p.cfg.client == nil {
		return fmt.Errorf("configmap %q: no apiserver", name)
	}
	cm, err := pr.p.cfg.client.CoreV1().ConfigMaps(pr.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if opt {
			return nil
		}
		return fmt.Errorf("configmap %q: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return writeItems(dir, data, items, opt)
}

func (pr *podRun) writeSecret(ctx context.Context, dir, name string, items []corev1.KeyToPath, optional *bool) error {
	opt := optional != nil && *optional
	if pr.p.cfg.client == nil {
		return fmt.Errorf("secret %q: no apiserver", name)
	}
	sec, err := pr.p.cfg.client.CoreV1().Secrets(pr.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if opt {
			return nil
		}
		return fmt.Errorf("secret %q: %w", name, err)
	}
	return writeItems(dir, sec.Data, items, opt)
}

func (pr *podRun) writeDownward(ctx context.Context, pod *corev1.Pod, dir string, items []corev1.DownwardAPIVolumeFile) error {
	for _, it := range items {
		var src corev1.EnvVarSource
		switch {
		case it.FieldRef != nil:
			src.FieldRef = it.FieldRef
		case it.ResourceFieldRef != nil:
			src.ResourceFieldRef = it.ResourceFieldRef
		default:
			continue
		}
		c := corev1.Container{}
		if it.ResourceFieldRef != nil {
			for _, x := range pod.Spec.Containers {
				if x.Name == it.ResourceFieldRef.ContainerName {
					c = x
				}
			}
		}
		v, err := valueFrom(ctx, pr.p.cfg.client, pod, &c, &src, podFacts{podIP: pr.ip, hostIP: pr.p.cfg.hostIP, nodeAlloc: pr.p.cfg.nodeAlloc})
		if err != nil {
			return fmt.Errorf("%s: %w", it.Path, err)
		}
		if v != nil {
			if err := writeFile(dir, it.Path, []byte(*v)); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeToken writes a service-account token bound to the pod (the TokenRequest API, as
// the kubelet's projected token) and returns what keeps it fresh while the pod runs: a
// new one at 80% of its lifetime.
func (pr *podRun) writeToken(ctx context.Context, path string, src *corev1.ServiceAccountTokenProjection) (func(), error) {
	if pr.p.cfg.client == nil {
		return nil, fmt.Errorf("serviceAccountToken: no apiserver")
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	sa := pr.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pr.pod.Name, UID: pr.pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	fetch := func(ctx context.Context) (time.Duration, error) {
		tr, err := pr.p.cfg.client.CoreV1().ServiceAccounts(pr.pod.Namespace).CreateToken(ctx, sa, req.DeepCopy(), metav1.CreateOptions{})
		if err != nil {
			return 0, fmt.Errorf("token for service account %q: %w", sa, err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return 0, err
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(tr.Status.Token), 0o600); err != nil {
			return 0, err
		}
		return time.Until(tr.Status.ExpirationTimestamp.Time) * 8 / 10, os.Rename(tmp, path)
	}
	next, err := fetch(ctx)
	if err != nil {
		return nil, err
	}
	return func() {
		for {
			select {
			case <-pr.ctx.Done():
				return
			case <-time.After(max(next, time.Minute)):
			}
			d, err := fetch(pr.ctx)
			if err != nil {
				pr.event(corev1.EventTypeWarning, "FailedMount", "refreshing the service-account token: %v", err)
				d = time.Minute
			}
			next = d
		}
	}, nil
}

// mount is one volumeMount of a container: where the container sees it and where it is.
type mount struct{ mountPath, hostPath string }

// mountsOf returns c's mounts, longest mountPath first (the most specific wins).
func mountsOf(c *corev1.Container, dirs map[string]string) []mount {
	var ms []mount
	for _, vm := range c.VolumeMounts {
		host, ok := dirs[vm.Name]
		if !ok {
			continue
		}
		if vm.SubPath != "" {
			host = filepath.Join(host, filepath.Clean("/"+vm.SubPath))
		}
		ms = append(ms, mount{filepath.Clean(vm.MountPath), host})
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i].mountPath) > len(ms[j].mountPath) })
	return ms
}

// rewritePaths maps a path under a mountPath, in a word of a command line or an env value
// (the whole word, or what follows its first '='), to the volume's host directory.
func rewritePaths(s string, ms []mount) string {
	if len(ms) == 0 {
		return s
	}
	prefix, rest := "", s
	if i := strings.IndexByte(s, '='); i >= 0 && !strings.HasPrefix(s, "/") {
		prefix, rest = s[:i+1], s[i+1:]
	}
	for _, m := range ms {
		if m.mountPath == m.hostPath {
			continue
		}
		if rest == m.mountPath {
			return prefix + m.hostPath
		}
		if strings.HasPrefix(rest, m.mountPath+"/") {
			return prefix + m.hostPath + rest[len(m.mountPath):]
		}
	}
	return s
}

// writePodKubeconfig writes the kubeconfig a pod's process uses to reach the apiserver as
// its service account (KUBECONFIG): in a container, client-go would read the token at
// /var/run/secrets/kubernetes.io/serviceaccount, which a process cannot have; here the
// same token and CA come from the volume's host directory. client-go rereads the token
// file, so refreshed tokens are used.
func (pr *podRun) writePodKubeconfig(saDir string) (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = &clientcmdapi.Cluster{Server: pr.p.cfg.apiServer, CertificateAuthority: filepath.Join(saDir, "ca.crt")}
	cfg.AuthInfos["serviceaccount"] = &clientcmdapi.AuthInfo{TokenFile: filepath.Join(saDir, "token")}
	cfg.Contexts["default"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "serviceaccount", Namespace: pr.pod.Namespace}
	cfg.CurrentContext = "default"
	path := filepath.Join(pr.dir, "kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}

// checkHostPath applies a hostPath volume's type as the kubelet does: Directory and File
// must exist as such, DirectoryOrCreate and FileOrCreate are created when absent.
func checkHostPath(h *corev1.HostPathVolumeSource) error {
	typ := corev1.HostPathUnset
	if h.Type != nil {
		typ = *h.Type
	}
	fi, err := os.Stat(h.Path)
	switch typ {
	case corev1.HostPathDirectoryOrCreate:
		if os.IsNotExist(err) {
			return os.MkdirAll(h.Path, 0o755)
		}
	case corev1.HostPathFileOrCreate:
		if os.IsNotExist(err) {
			if err := os.MkdirAll(filepath.Dir(h.Path), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(h.Path, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			return f.Close()
		}
	case corev1.HostPathDirectory:
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("hostPath type check failed: %s is not a directory", h.Path)
		}
	case corev1.HostPathFile:
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("hostPath type check failed: %s is not a file", h.Path)
		}
	}
	return nil
}
