package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestRouterServesExtProc: with --ext-proc-port the router command also answers a gateway's
// ext_proc stream with the picked endpoint, and stops on cancel.
func TestRouterServesExtProc(t *testing.T) {
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n")
	}))
	defer engine.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	out := &syncBuffer{}
	cmd.SetOut(out)
	cmd.SetErr(out)
	cmd.SetArgs([]string{"router", "--endpoints", engine.URL, "--port", "0", "--ext-proc-port", "0", "--scrape-interval", "10ms", "--kv-events=false"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	addrRE := regexp.MustCompile(`endpoint picker \(ext_proc, gRPC\) listening on (127\.0\.0\.1:\d+)`)
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; time.Sleep(10 * time.Millisecond) {
		if m := addrRE.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ext_proc address printed: %q", out.String())
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Ready once the engine's first scrape answered.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "readiness"})
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %v %v", resp, err)
		}
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	s, err := extprocv3.NewExternalProcessorClient(conn).Process(sctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":path", RawValue: []byte("/v1/completions")}}}}}})
	s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
		Body: []byte(`{"prompt":"hi"}`), EndOfStream: true}}})
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var dest string
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == "x-gateway-destination-endpoint" {
			dest = string(h.GetHeader().GetRawValue())
		}
	}
	if want := strings.TrimPrefix(engine.URL, "http://"); dest != want {
		t.Errorf("x-gateway-destination-endpoint %q, want %q (answer %v)", dest, want, resp)
	}
	s.CloseSend()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the router did not stop; output:\n%s", out)
	}
}

func TestRouterRefusesBadExtProcPort(t *testing.T) {
	cmd := newRootCmd()
	cmd.SetOut(&syncBuffer{})
	cmd.SetErr(&syncBuffer{})
	cmd.SetArgs([]string{"router", "--endpoints", "http://127.0.0.1:1", "--ext-proc-port", "-2"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--ext-proc-port -2") {
		t.Errorf("err %v, want one naming --ext-proc-port -2", err)
	}
}
