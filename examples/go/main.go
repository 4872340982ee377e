// The tutorial's server in Go, as a baton worker:
//
//	go build -o server . && baton serve --workers 2 -- ./server
//
// A plain net/http server; batondrain gives it the socket baton passes and a
// drain that fails no request. DRAIN_GRACE_MS (default 5000) sets the grace.
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"

	"baton.example/batondrain"
)

func main() {
	grace := 5 * time.Second
	if ms, err := strconv.Atoi(os.Getenv("DRAIN_GRACE_MS")); err == nil {
		grace = time.Duration(ms) * time.Millisecond
	}
	ln, err := batondrain.Listener()
	if err != nil {
		log.Fatal(err)
	}
	pid := os.Getpid()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "Process handled by pid: %d", pid)
	})
	if err := batondrain.Serve(&http.Server{Handler: mux}, ln, grace); err != nil {
		log.Fatal(err)
	}
}
