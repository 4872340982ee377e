// Package batondrain runs a Go net/http server as a baton worker and drains it
// without failing a request:
//
//	ln, err := batondrain.Listener()   // the socket baton passes (fd 3)
//	err = batondrain.Serve(&http.Server{Handler: mux}, ln, 5*time.Second)
//
// http.Server's own Shutdown closes every idle keep-alive connection at once,
// racing each client about to reuse one: that client sees a reset or an
// early EOF. (SetKeepAlivesEnabled(false) closes them at once too.) On
// baton's drain signal (SIGTERM), Serve instead:
//   - stops accepting (the other workers take the shared queue), without
//     touching open connections;
//   - answers every later request with "Connection: close", so each client
//     leaves after its next answer;
//   - keeps idle keep-alive connections for the grace, so that each
//     client's next request is answered, then calls Shutdown, which closes
//     those still idle and waits for requests in flight.
//
// Keep the grace longer than your clients' think time and below baton's
// --drain-timeout.
package batondrain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Listener returns the first listening socket baton passed, the systemd way
// (descriptor 3, LISTEN_FDS, LISTEN_PID).
func Listener() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, errors.New("no listening socket was passed: run me as `baton serve -- PROGRAM`")
	}
	if n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS")); n < 1 {
		return nil, errors.New("LISTEN_FDS names no socket")
	}
	file := os.NewFile(3, "baton-listener")
	defer file.Close() // FileListener keeps its own duplicate
	ln, err := net.FileListener(file)
	if err != nil {
		return nil, fmt.Errorf("descriptor 3 is not a listening socket: %w", err)
	}
	return ln, nil
}

// Serve serves srv on ln until SIGTERM, drains as the package says, and
// returns nil once every connection has closed (or the error that stopped
// the server).
func Serve(srv *http.Server, ln net.Listener, grace time.Duration) error {
	var draining atomic.Bool
	handler := srv.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		handler.ServeHTTP(w, r)
	})

	// Open connections, to end the grace early once every client has left.
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	previous := srv.ConnState
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		mu.Lock()
		switch state {
		case http.StateNew:
			open[c] = true
		case http.StateHijacked, http.StateClosed:
			delete(open, c)
		}
		mu.Unlock()
		if previous != nil {
			previous(c, state)
		}
	}
	remaining := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(open)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return err
	case <-stop:
	}
	draining.Store(true)
	ln.Close() // Serve returns; open connections carry on
	<-served

	end := time.Now().Add(grace)
	for remaining() > 0 && time.Now().Before(end) {
		time.Sleep(20 * time.Millisecond)
	}
	return srv.Shutdown(context.Background())
}
