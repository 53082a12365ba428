package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pki is one cluster's certificate authority and the files made from it. ECDSA P-256 keeps
// key generation instant; every client here (client-go, kube-rs with rustls) accepts it.
type pki struct {
	dir   string
	ca    *x509.Certificate
	caKey crypto.Signer
}

type identity struct {
	name   string
	groups []string
}

// parseIdentity reads NAME[=GROUP[,GROUP...]]; user names may hold ':' (system:...).
func parseIdentity(s string) identity {
	name, groups, found := strings.Cut(s, "=")
	if !found || groups == "" {
		return identity{name: name}
	}
	return identity{name: name, groups: strings.Split(groups, ",")}
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

func writePKI(dir, clusterName string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kmm-fleet test CA " + clusterName},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, ca: ca, caKey: caKey}
	if err := writeCert(p.path("ca.crt"), der); err != nil {
		return nil, err
	}
	if err := writeKey(p.path("ca.key"), caKey); err != nil {
		return nil, err
	}
	if _, _, err := p.issue("apiserver", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
	}); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := writeKey(p.path("sa.key"), saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.path("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

var serial int64 = 1

// issue signs a certificate for tmpl with a new key and writes <base>.crt and <base>.key.
func (p *pki) issue(base string, tmpl *x509.Certificate) (string, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore = p.ca.NotBefore
	tmpl.NotAfter = p.ca.NotAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return "", "", err
	}
	crt, keyPath := p.path(base+".crt"), p.path(base+".key")
	if err := writeCert(crt, der); err != nil {
		return "", "", err
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", "", err
	}
	return crt, keyPath, nil
}

// writeKubeconfig issues a client certificate for id and writes a kubeconfig that embeds it.
func (p *pki) writeKubeconfig(path, server, cluster string, id identity) error {
	base := strings.NewReplacer(":", "_", "/", "_").Replace(id.name)
	crt, key, err := p.issue(base, &x509.Certificate{
		Subject:     pkix.Name{CommonName: id.name, Organization: id.groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority: %[3]s
users:
- name: %[4]q
  user:
    client-certificate: %[5]s
    client-key: %[6]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: %[4]q
current-context: %[1]s
`, cluster, server, p.path("ca.crt"), id.name, crt, key)), 0o600)
}

func writeCert(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}
