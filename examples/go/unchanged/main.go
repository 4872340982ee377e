// A plain net/http server stopped the documented way (Shutdown on
// SIGTERM), unchanged apart from taking its listener on descriptor 3:
//
//	go build -o unchanged-server ./unchanged && baton serve --workers 2 -- ./unchanged-server
//
// Shutdown closes idle keep-alive connections at once; baton's rescue
// (--rescue-connections) answers the requests that cross those closes.
// main.go, with batondrain, drains without that race.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		log.Fatal(err)
	}
	pid := os.Getpid()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "Process handled by pid: %d", pid)
	})
	srv := &http.Server{Handler: mux}
	stopped := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		srv.Shutdown(context.Background())
		close(stopped)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-stopped
}
