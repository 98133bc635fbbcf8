package query

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/peer"

	"github.com/tally-accounting/tally/pkg/config"
)

func peerContext(addr string) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: fakeAddr(addr)})
}

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate into dir.
func pki(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	put := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		return put(name+".crt", "CERTIFICATE", der), put(name+".key", "EC PRIVATE KEY", kder)
	}
	serverCert, serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	clientCert, clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return put("ca.crt", "CERTIFICATE", caDER), serverCert, serverKey, clientCert, clientKey
}

// TestMutualTLS: a client certificate is a credential; without one (and
// without a token) a call is refused, loopback or not.
func TestMutualTLS(t *testing.T) {
	ca, sc, sk, cc, ck := pki(t, t.TempDir())
	svc, f := apiService(t, backends[0], WatchBuffer)
	addr := serve(t, svc, Auth{TLSCert: sc, TLSKey: sk, ClientCA: ca})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Command(ctx, append(args, "--addr", addr, "--tls-ca", ca), &out, &errb, func(string) string { return "" })
		return code, out.String(), errb.String()
	}
	code, out, errs := run("get", f.vmB.GetKey(), "--tls-cert", cc, "--tls-key", ck)
	if code != 0 || !strings.Contains(out, `"vmUuid":"vm-b"`) {
		t.Errorf("with a client certificate: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	code, _, errs = run("get", f.vmB.GetKey())
	if code != 1 || !strings.Contains(errs, "Unauthenticated") {
		t.Errorf("without a client certificate: exit %d, stderr %q; want 1 and Unauthenticated", code, errs)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(c *Config)
		key  string // "" for valid
	}{
		{"default", func(*Config) {}, ""},
		{"sqlite", func(c *Config) { c.Store = "sqlite:///var/lib/tally/query.db" }, ""},
		{"postgres", func(c *Config) { c.Store = "postgres://tally@db/tally" }, ""},
		{"bad store", func(c *Config) { c.Store = "mysql://x" }, "store"},
		{"bad listen", func(c *Config) { c.Listen = "50063" }, "listen"},
		{"bad type", func(c *Config) { c.RecordTypes = []string{"vm"} }, "record_types"},
		{"cert without key", func(c *Config) { c.Auth.TLSCert = "c.pem" }, "auth.tls_cert"},
		{"ca without cert", func(c *Config) { c.Auth.ClientCA = "ca.pem" }, "auth.client_ca"},
		{"nobody may call", func(c *Config) { c.Auth.AllowUnauthenticatedLoopback = false }, "auth.token"},
		{"short token", func(c *Config) { c.Auth.Token = config.Secret("short") }, "auth.token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			err := c.Validate()
			var fe *config.FieldError
			switch {
			case tc.key == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tc.key != "" && (!errors.As(err, &fe) || fe.Key != tc.key):
				t.Errorf("Validate: %v, want an error for %s", err, tc.key)
			}
		})
	}
}

func TestOpenDefaultsToSQLiteInDataDir(t *testing.T) {
	dir := t.TempDir()
	svc, err := Open(context.Background(), DefaultConfig(), dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := os.Stat(filepath.Join(dir, "query.db")); err != nil {
		t.Errorf("no store file: %v", err)
	}
	if _, ok := svc.Store().(*sqliteStore); !ok {
		t.Errorf("store is %T, want SQLite", svc.Store())
	}
}
