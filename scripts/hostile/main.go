// Command hostile measures how a running `servelab engine` holds up against huge prompts
// and slow bodies (issue 10), for scripts/bench.sh: a prompt of -prompt-mb MB refused
// (latency, extra RSS), -concurrent of them at once while normal requests keep being
// served (their latency, peak RSS growth, RSS afterwards), and -trickle clients sending
// their bodies a byte every 5 s (how many the engine closed, and when). RSS is read from
// /proc/PID/status of the engine process. It prints a Markdown table.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	url        = flag.String("url", "http://127.0.0.1:8000", "the engine's base URL")
	pid        = flag.Int("pid", 0, "the engine's process id (for its RSS)")
	model      = flag.String("model", "tiny", "served model name")
	promptMB   = flag.Int("prompt-mb", 30, "size of the huge prompt, MB")
	concurrent = flag.Int("concurrent", 16, "huge prompts sent at once")
	trickle    = flag.Int("trickle", 20, "clients trickling their bodies")
	settle     = flag.Duration("settle", 30*time.Second, "how long to wait for RSS to come back")
)

func rssMB() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", *pid))
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	log.Fatal("no VmRSS")
	return 0
}

// peakRSS samples RSS every 5 ms until stop is closed and returns the largest.
func peakRSS(stop <-chan struct{}) <-chan float64 {
	out := make(chan float64, 1)
	go func() {
		peak := rssMB()
		for {
			select {
			case <-stop:
				out <- max(peak, rssMB())
				return
			case <-time.After(5 * time.Millisecond):
				peak = max(peak, rssMB())
			}
		}
	}()
	return out
}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func post(body []byte) (int, time.Duration, error) {
	began := time.Now()
	resp, err := client.Post(*url+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(began), nil
}

func normal() (time.Duration, error) {
	code, d, err := post([]byte(fmt.Sprintf(`{"model": %q, "prompt": "Once upon a time", "max_tokens": 8}`, *model)))
	if err == nil && code != 200 {
		err = fmt.Errorf("normal request: HTTP %d", code)
	}
	return d, err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

func quantile(ds []time.Duration, q float64) time.Duration {
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

func main() {
	flag.Parse()
	if *pid == 0 {
		log.Fatal("-pid is required")
	}
	var before []time.Duration
	for range 20 {
		d, err := normal()
		if err != nil {
			log.Fatal(err)
		}
		before = append(before, d)
	}
	base := rssMB()
	huge := []byte(fmt.Sprintf(`{"model": %q, "max_tokens": 1, "prompt": "%s"}`, *model, strings.Repeat("hello world ", *promptMB<<20/12)))
	fmt.Println("| measurement | value |")
	fmt.Println("| --- | ---: |")
	fmt.Printf("| engine RSS before, MB | %.0f |\n", base)
	fmt.Printf("| normal request (8 tokens) before, p50 / max ms | %s / %s |\n", ms(quantile(before, 0.5)), ms(quantile(before, 1)))

	// One huge prompt.
	stop := make(chan struct{})
	peak := peakRSS(stop)
	code, d, err := post(huge)
	close(stop)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("| one %d MB prompt: status, ms to the answer | %d, %s |\n", len(huge)>>20, code, ms(d))
	fmt.Printf("| one %d MB prompt: peak RSS growth, MB | %.0f |\n", len(huge)>>20, <-peak-base)

	// Many at once, with normal requests in between.
	stop = make(chan struct{})
	peak = peakRSS(stop)
	var wg sync.WaitGroup
	var worst atomic.Int64
	codes := make([]int, *concurrent)
	for i := range *concurrent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, d, err := post(huge)
			if err != nil {
				log.Fatal(err)
			}
			codes[i] = c
			for w := worst.Load(); int64(d) > w && !worst.CompareAndSwap(w, int64(d)); w = worst.Load() {
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var during []time.Duration
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		d, err := normal()
		if err != nil {
			log.Fatal(err)
		}
		during = append(during, d)
	}
	close(stop)
	refused := 0
	for _, c := range codes {
		if c >= 400 && c < 500 {
			refused++
		}
	}
	fmt.Printf("| %d at once: refused (HTTP %v), slowest answer ms | %d of %d, %s |\n", *concurrent, slices.Compact(slices.Sorted(slices.Values(codes))), refused, *concurrent, ms(time.Duration(worst.Load())))
	fmt.Printf("| %d at once: peak RSS growth, MB | %.0f |\n", *concurrent, <-peak-base)
	fmt.Printf("| normal requests meanwhile: count, p50 / max ms | %d, %s / %s |\n", len(during), ms(quantile(during, 0.5)), ms(quantile(during, 1)))
	began := time.Now()
	for rssMB()-base > 0.1*base && time.Since(began) < *settle {
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("| RSS afterwards, MB (growth), s to within 10%% of before | %.0f (%+.0f), %.1f |\n", rssMB(), rssMB()-base, time.Since(began).Seconds())

	// Trickling bodies.
	if *trickle > 0 {
		host := strings.TrimPrefix(*url, "http://")
		closedAt := make([]time.Duration, *trickle)
		statuses := make([]string, *trickle)
		began := time.Now()
		var wg sync.WaitGroup
		for i := range *trickle {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", host)
				if err != nil {
					log.Fatal(err)
				}
				defer c.Close()
				fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
				go func() {
					for {
						if _, err := c.Write([]byte("{")); err != nil {
							return
						}
						time.Sleep(5 * time.Second)
					}
				}()
				c.SetReadDeadline(time.Now().Add(120 * time.Second))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					statuses[i] = "open at 120 s"
					return
				}
				statuses[i] = strconv.Itoa(resp.StatusCode)
				io.Copy(io.Discard, resp.Body)
				c.Read(make([]byte, 1)) // until the server closes
				closedAt[i] = time.Since(began)
			}()
		}
		wg.Wait()
		n := 0
		for _, c := range closedAt {
			if c > 0 {
				n++
			}
		}
		fmt.Printf("| %d clients trickling a byte / 5 s: closed by the engine, answers, last closed after s | %d, %s, %.1f |\n",
			*trickle, n, strings.Join(slices.Compact(slices.Sorted(slices.Values(statuses))), "/"), slices.Max(closedAt).Seconds())
	}
}
