package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"servelab/engine/model"
	"servelab/engine/tokenizer"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/real/router"
)

type routerFlags struct {
	endpoints []string
	spec      string
	host      string
	port      int
	scrape    time.Duration
	blockSize int
	model     string
	kvEvents  bool
	seed      uint64
}

func (f *routerFlags) build() (*router.Router, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	return router.New(cfg)
}

// promptTokenLimit is the longest prompt an engine serving dir can accept: its
// config.json's max_position_embeddings (servelab engine refuses a longer
// --max-model-len), else tokenizer_config.json's model_max_length when it is a real
// length, else 1 Mi tokens.
func promptTokenLimit(dir string, tok *tokenizer.Tokenizer) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	switch {
	case err == nil:
		c, err := model.ParseConfig(data)
		if err != nil {
			return 0, err
		}
		return c.MaxPos, nil
	case !errors.Is(err, os.ErrNotExist):
		return 0, err
	case tok.ModelMaxLength() > 0 && tok.ModelMaxLength() <= 1<<24:
		return int(tok.ModelMaxLength()), nil
	}
	return 1 << 20, nil
}

// config is the router's configuration without endpoints when f.endpoints is empty.
func (f *routerFlags) config() (router.Config, error) {
	policy, err := route.Parse(f.spec, policies.Env{Seed: f.seed, BlockSize: f.blockSize})
	if err != nil {
		return router.Config{}, err
	}
	cfg := router.Config{
		Endpoints: f.endpoints, Policy: policy, ScrapeInterval: f.scrape,
		BlockSize: f.blockSize, KVEvents: f.kvEvents,
	}
	if f.model != "" {
		tok, err := tokenizer.Load(f.model)
		if err != nil {
			return router.Config{}, err
		}
		limit, err := promptTokenLimit(f.model, tok)
		if err != nil {
			return router.Config{}, err
		}
		// Completions prompts are encoded as the engine encodes them, so the router's block
		// hashes equal the engine's and KV events can be matched; no further than an
		// engine could accept, and not after the client left.
		cfg.Encode = func(ctx context.Context, s string) []int32 {
			ids, _, _ := tok.EncodePrefix(ctx, s, true, limit)
			return ids
		}
	}
	return cfg, nil
}

func newRouterCmd() *cobra.Command {
	var f routerFlags
	cmd := &cobra.Command{
		Use:   "router --endpoints URL,URL,... --router SPEC [--port N]",
		Short: "Route OpenAI requests across engines with the simulator's routing policies",
		Long: `An OpenAI-compatible proxy (completions and chat, streaming passed through unbuffered) that
picks an endpoint per request with a routing policy spec or llm-d EndpointPickerConfig file, the
same objects 'servelab sim' uses. Views come from each endpoint's /metrics (vLLM metric names, so
vLLM and llm-d-inference-sim servers work too) and, with --kv-events, from servelab engines'
/v1/kv_events for an exact prefix index. Give --model (the engines' model directory) so prompts are
hashed into the engines' token blocks. Failed endpoints are retried elsewhere and skipped until a
scrape answers again. Its own metrics: servelab_router_decisions_total{endpoint},
servelab_router_scoring_seconds, servelab_router_retries_total.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := f.build()
			if err != nil {
				return err
			}
			defer r.Close()
			ln, err := net.Listen("tcp", net.JoinHostPort(f.host, strconv.Itoa(f.port)))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "servelab router: %d endpoints, policy %s, listening on http://%s\n", len(f.endpoints), f.spec, ln.Addr())
			srv := &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 10 * time.Second}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			select {
			case err := <-errc:
				if !errors.Is(err, http.ErrServerClosed) {
					return err
				}
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&f.endpoints, "endpoints", nil, "engine base URLs, comma separated")
	fl.StringVar(&f.spec, "router", "least-request", "routing policy spec or EndpointPickerConfig YAML file")
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to bind")
	fl.IntVar(&f.port, "port", 8080, "port to listen on (0 picks a free one)")
	fl.DurationVar(&f.scrape, "scrape-interval", 50*time.Millisecond, "how often each endpoint's /metrics is read")
	fl.IntVar(&f.blockSize, "block-size", 16, "the engines' KV block size, for prompt hashing")
	fl.StringVar(&f.model, "model", "", "the engines' model directory, to hash prompts with their tokenizer")
	fl.BoolVar(&f.kvEvents, "kv-events", true, "follow endpoints' /v1/kv_events for an exact prefix index (servelab engines)")
	fl.Uint64Var(&f.seed, "seed", 0, "seed of randomised policies")
	return cmd
}
