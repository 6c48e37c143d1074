package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The files of the cluster's PKI, under Dir/pki. Every certificate is signed by one CA;
// the components all authenticate with client certificates (the apiserver's
// --client-ca-file), the way kubeadm lays a control plane out, with fewer identities:
// the controller-manager, the scheduler and the node use the admin identity
// (system:masters), which is enough for a cluster that lives on loopback for one user.
const (
	caCert            = "ca.crt"
	caKey             = "ca.key"
	apiserverCert     = "apiserver.crt"
	apiserverKey      = "apiserver.key"
	kubeletClientCert = "apiserver-kubelet-client.crt"
	kubeletClientKey  = "apiserver-kubelet-client.key"
	adminCert         = "admin.crt"
	adminKey          = "admin.key"
	nodeServingCert   = "kubelet.crt"
	nodeServingKey    = "kubelet.key"
	saKey             = "sa.key"
	saPub             = "sa.pub"
)

// certValidity is how long the certificates last: a local cluster is torn down long before.
const certValidity = 365 * 24 * time.Hour

// serviceIP is the first address of --service-cluster-ip-range (ServiceCIDR), the
// `kubernetes` Service's ClusterIP, which the apiserver's serving certificate names as
// kubeadm's does.
var serviceIP = net.IPv4(127, 1, 0, 1)

type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// writePKI creates the CA and every certificate and key the cluster needs under dir
// (created 0700). It refuses to overwrite an existing CA: a second `up` on the same
// directory reuses the PKI the first one wrote, so kubeconfigs handed out stay valid.
func writePKI(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, caCert)); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := newCA()
	if err != nil {
		return err
	}
	if err := writePair(dir, caCert, caKey, ca); err != nil {
		return err
	}
	loopback := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	type leaf struct {
		cert, key string
		tmpl      x509.Certificate
	}
	leaves := []leaf{
		{apiserverCert, apiserverKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPAddresses: append([]net.IP{serviceIP}, loopback...),
		}},
		{nodeServingCert, nodeServingKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: NodeName},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{"localhost", NodeName},
			IPAddresses: loopback,
		}},
		// The apiserver's identity towards the node's kubelet API (logs), as kubeadm's
		// apiserver-kubelet-client.
		{kubeletClientCert, kubeletClientKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"kubeadm:cluster-admins"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
		{adminCert, adminKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "servelab-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
	}
	for _, l := range leaves {
		kp, err := newLeaf(ca, l.tmpl)
		if err != nil {
			return fmt.Errorf("certificate %s: %w", l.cert, err)
		}
		if err := writePair(dir, l.cert, l.key, kp); err != nil {
			return err
		}
	}
	// The service-account token signer: RSA, as the apiserver's default issuer expects
	// (--service-account-signing-key-file, RS256).
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, saKey), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa)); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, saPub), "PUBLIC KEY", pub)
}

func newCA() (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "servelab-cluster-ca"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(10 * certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return keyPair{}, err
	}
	cert, err := x509.ParseCertificate(der)
	return keyPair{cert, key}, err
}

func newLeaf(ca keyPair, tmpl x509.Certificate) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, err
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Minute)
	tmpl.NotAfter = now.Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return keyPair{}, err
	}
	cert, err := x509.ParseCertificate(der)
	return keyPair{cert, key}, err
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func writePair(dir, certName, keyName string, kp keyPair) error {
	der, err := x509.MarshalECPrivateKey(kp.key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, keyName), "EC PRIVATE KEY", der); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, certName), "CERTIFICATE", kp.cert.Raw)
}

func writePEM(path, typ string, der []byte) error {
	mode := os.FileMode(0o644)
	if typ != "CERTIFICATE" && typ != "PUBLIC KEY" {
		mode = 0o600
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// readPEM returns the contents of a PEM file, for embedding in a kubeconfig.
func readPEM(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk == nil {
		return nil, errors.New(path + ": not a PEM file")
	}
	return b, nil
}

// loadIdentity reads a certificate and key of the cluster in dir and the cluster's CA as
// a pool (to verify the other side with).
func loadIdentity(dir, certName, keyName string) (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(pkiFile(dir, certName), pkiFile(dir, keyName))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, err := os.ReadFile(pkiFile(dir, caCert))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return tls.Certificate{}, nil, errors.New(pkiFile(dir, caCert) + ": no certificate")
	}
	return cert, pool, nil
}
