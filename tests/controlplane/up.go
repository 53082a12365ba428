package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// upConfig is what `up` was asked for.
type upConfig struct {
	dir           string
	name          string
	admission     string
	apiserverArgs multiFlag
	kcmArgs       multiFlag
	users         multiFlag
	noKCM         bool
	noScheduler   bool
	timeout       time.Duration
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// upState is written to <dir>/state.json once the cluster answers /readyz; the harness reads it.
type upState struct {
	Name        string            `json:"name"`
	Server      string            `json:"server"`
	CA          string            `json:"ca"`
	Etcd        string            `json:"etcd"`
	Kubeconfigs map[string]string `json:"kubeconfigs"`
	AuditLog    string            `json:"auditLog"`
	Pids        map[string]int    `json:"pids"`
}

const upUsage = `usage: kmm-controlplane up --dir DIR [flags]

Starts etcd (embedded), kube-apiserver, kube-controller-manager and kube-scheduler for one
cluster on loopback. Writes DIR/pki, one kubeconfig per identity (DIR/<user>.kubeconfig;
admin is system:masters), the components' logs, the apiserver's audit log, and last
DIR/state.json. Runs until SIGTERM or until its parent process exits.
`

func runUp(args []string) int {
	cfg := upConfig{}
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, upUsage); fs.PrintDefaults() }
	fs.StringVar(&cfg.dir, "dir", "", "state directory (required)")
	fs.StringVar(&cfg.name, "name", "cluster", "cluster name, used in logs and the CA's name")
	fs.StringVar(&cfg.admission, "enable-admission-plugins", "",
		"admission plugins on top of the default set, e.g. OwnerReferencesPermissionEnforcement")
	fs.Var(&cfg.apiserverArgs, "apiserver-arg", "extra kube-apiserver flag (repeatable)")
	fs.Var(&cfg.kcmArgs, "kcm-arg", "extra kube-controller-manager flag (repeatable)")
	fs.Var(&cfg.users, "user", "a client-certificate identity NAME[=GROUP[,GROUP...]]; writes DIR/NAME.kubeconfig (repeatable)")
	fs.BoolVar(&cfg.noKCM, "no-controller-manager", false, "do not start kube-controller-manager")
	fs.BoolVar(&cfg.noScheduler, "no-scheduler", false, "do not start kube-scheduler")
	fs.DurationVar(&cfg.timeout, "timeout", 120*time.Second, "how long the apiserver may take to become ready")
	_ = fs.Parse(args)
	// Children get SIGKILL when the thread that started them ends (Pdeathsig), so they are
	// started from this goroutine, pinned to its thread for the life of the process.
	runtime.LockOSThread()
	if cfg.dir == "" {
		fs.Usage()
		return 2
	}
	if err := up(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "kmm-controlplane up (%s): %v\n", cfg.name, err)
		return 1
	}
	return 0
}

func up(cfg upConfig) error {
	dir, err := filepath.Abs(cfg.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "state.json"))
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	server := fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	pki, err := writePKI(filepath.Join(dir, "pki"), cfg.name)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	etcd, err := startEtcd(filepath.Join(dir, "etcd"), etcdURL, fmt.Sprintf("http://127.0.0.1:%d", ports[1]))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	kubeconfigs := map[string]string{}
	identities := []identity{
		{name: "admin", groups: []string{"system:masters"}},
		{name: "system:kube-controller-manager"},
		{name: "system:kube-scheduler"},
	}
	for _, u := range cfg.users {
		identities = append(identities, parseIdentity(u))
	}
	for _, id := range identities {
		path := filepath.Join(dir, kubeconfigFileName(id.name))
		if err := pki.writeKubeconfig(path, server, cfg.name, id); err != nil {
			return fmt.Errorf("kubeconfig for %s: %w", id.name, err)
		}
		kubeconfigs[id.name] = path
	}
	auditLog := filepath.Join(dir, "audit.log")
	auditPolicy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(auditPolicy, []byte(auditPolicyYAML), 0o600); err != nil {
		return err
	}

	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports[2]),
		"--tls-cert-file=" + pki.path("apiserver.crt"),
		"--tls-private-key-file=" + pki.path("apiserver.key"),
		"--client-ca-file=" + pki.path("ca.crt"),
		"--service-account-issuer=" + server,
		"--service-account-key-file=" + pki.path("sa.pub"),
		"--service-account-signing-key-file=" + pki.path("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--audit-log-path=" + auditLog,
		"--audit-policy-file=" + auditPolicy,
		"--audit-log-format=json",
		"--audit-log-mode=batch",
		"--audit-log-batch-max-wait=200ms",
		"--audit-log-maxsize=0",
		"--endpoint-reconciler-type=none",
		"--v=1",
	}
	if cfg.admission != "" {
		apiArgs = append(apiArgs, "--enable-admission-plugins="+cfg.admission)
	}
	apiArgs = append(apiArgs, cfg.apiserverArgs...)

	sup := newSupervisor(dir)
	defer sup.stopAll()
	if err := sup.start("kube-apiserver", apiArgs); err != nil {
		return err
	}
	if err := waitReady(server, pki, cfg.timeout, sup); err != nil {
		return err
	}
	if !cfg.noKCM {
		kcmArgs := []string{
			"--kubeconfig=" + kubeconfigs["system:kube-controller-manager"],
			"--leader-elect=false",
			"--secure-port=0",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pki.path("sa.key"),
			"--root-ca-file=" + pki.path("ca.crt"),
			"--cluster-signing-cert-file=" + pki.path("ca.crt"),
			"--cluster-signing-key-file=" + pki.path("ca.key"),
			"--controllers=" + strings.Join(kcmControllers, ","),
			// A node that stops renewing its Lease turns NotReady after 16 s, not 50.
			"--node-monitor-period=2s",
			"--node-monitor-grace-period=16s",
			"--concurrent-gc-syncs=4",
			"--v=1",
		}
		if err := sup.start("kube-controller-manager", append(kcmArgs, cfg.kcmArgs...)); err != nil {
			return err
		}
	}
	if !cfg.noScheduler {
		if err := sup.start("kube-scheduler", []string{
			"--kubeconfig=" + kubeconfigs["system:kube-scheduler"],
			"--leader-elect=false",
			"--secure-port=0",
			"--v=1",
		}); err != nil {
			return err
		}
	}

	state := upState{
		Name: cfg.name, Server: server, CA: pki.path("ca.crt"), Etcd: etcdURL,
		Kubeconfigs: kubeconfigs, AuditLog: auditLog, Pids: sup.pids(),
	}
	data, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "state.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "state.json")); err != nil {
		return err
	}
	fmt.Printf("ready %s %s\n", cfg.name, server)
	return sup.wait(etcd.Err())
}

// kcmControllers are the controllers kmm-fleet's tests rely on; the rest stay off to save CPU.
var kcmControllers = []string{
	"garbage-collector-controller",
	"namespace-controller",
	"job-controller",
	"daemonset-controller",
	"deployment-controller",
	"replicaset-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"node-lifecycle-controller",
	"taint-eviction-controller",
	"pod-garbage-collector-controller",
	"ttl-after-finished-controller",
	"root-ca-certificate-publisher-controller",
	"certificatesigningrequest-signing-controller",
	"certificatesigningrequest-cleaner-controller",
	"clusterrole-aggregation-controller",
}

// auditPolicyYAML records every request at Metadata level once it completes: the tests
// count writes (verb, resource, user) from it, independently of the products' own counters.
const auditPolicyYAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version", "/openapi*", "/api", "/apis", "/api/*", "/apis/*"]
- level: Metadata
`

func kubeconfigFileName(user string) string {
	return strings.NewReplacer(":", "_", "/", "_").Replace(user) + ".kubeconfig"
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitReady polls /readyz as admin until it answers 200, or a component dies, or time runs out.
func waitReady(server string, pki *pki, timeout time.Duration, sup *supervisor) error {
	cert, err := tls.LoadX509KeyPair(pki.path("admin.crt"), pki.path("admin.key"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(pki.ca)
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		}},
	}
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		if err := sup.exited(); err != nil {
			return err
		}
		resp, err := client.Get(server + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after %s (last answer: %s); see %s", timeout, last, sup.logPath("kube-apiserver"))
}

// supervisor runs the components as children of this process, each with its log file; a child
// that exits ends the whole cluster, and so does this process's parent going away.
type supervisor struct {
	dir   string
	procs map[string]*exec.Cmd
	args  map[string][]string
	done  chan childExit
}

type childExit struct {
	name string
	err  error
}

func newSupervisor(dir string) *supervisor {
	return &supervisor{dir: dir, procs: map[string]*exec.Cmd{}, args: map[string][]string{}, done: make(chan childExit, 8)}
}

func (s *supervisor) logPath(name string) string { return filepath.Join(s.dir, name+".log") }

func (s *supervisor) start(name string, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	log, err := os.OpenFile(s.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	s.procs[name] = cmd
	s.args[name] = args
	go func() {
		err := cmd.Wait()
		_ = log.Close()
		s.done <- childExit{name: name, err: err}
	}()
	return nil
}

func (s *supervisor) pids() map[string]int {
	out := map[string]int{"up": os.Getpid()}
	for name, cmd := range s.procs {
		out[name] = cmd.Process.Pid
	}
	return out
}

// exited says whether a child has ended already (used while waiting for readiness).
func (s *supervisor) exited() error {
	select {
	case e := <-s.done:
		return fmt.Errorf("%s exited: %v; see %s", e.name, e.err, s.logPath(e.name))
	default:
		return nil
	}
}

// wait blocks until SIGTERM/SIGINT (clean stop), the parent process goes away, etcd fails, or a
// component exits (an error). SIGHUP restarts kube-apiserver (its clients' watches break and
// resume from where they were, as after an apiserver rollout); it writes apiserver-restarts
// with the count once the new one is started.
func (s *supervisor) wait(etcdErr <-chan error) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	restarts := 0
	parent := os.Getppid()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-sig:
			return nil
		case <-hup:
			if err := s.restart("kube-apiserver"); err != nil {
				return err
			}
			restarts++
			_ = os.WriteFile(filepath.Join(s.dir, "apiserver-restarts"), []byte(fmt.Sprint(restarts)), 0o600)
		case e := <-s.done:
			return fmt.Errorf("%s exited: %v; see %s", e.name, e.err, s.logPath(e.name))
		case err := <-etcdErr:
			return fmt.Errorf("etcd: %w", err)
		case <-tick.C:
			if os.Getppid() != parent {
				return errors.New("parent process exited")
			}
		}
	}
}

// restart stops one child (SIGTERM, then SIGKILL after 10 s) and starts it again with its arguments.
func (s *supervisor) restart(name string) error {
	cmd, ok := s.procs[name]
	if !ok {
		return fmt.Errorf("no %s to restart", name)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case e := <-s.done:
		if e.name != name {
			return fmt.Errorf("%s exited: %v; see %s", e.name, e.err, s.logPath(e.name))
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		if e := <-s.done; e.name != name {
			return fmt.Errorf("%s exited: %v; see %s", e.name, e.err, s.logPath(e.name))
		}
	}
	return s.start(name, s.args[name])
}

// stopAll sends SIGTERM to every child, then SIGKILL to those still running after 5 s.
func (s *supervisor) stopAll() {
	for _, cmd := range s.procs {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range s.procs {
		select {
		case <-s.done:
		case <-ctx.Done():
			for _, cmd := range s.procs {
				_ = cmd.Process.Kill()
			}
			return
		}
	}
}
