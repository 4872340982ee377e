// Real-client load for baton's tests: Go's net/http client (keep-alive
// HTTP/1.1, its default transport's connection pool), sending GETs with
// 10-100 ms think times until STOP_FILE exists. Prints one JSON line:
// {"ok": N, "failed": F, "errors": {kind: n}}.
//
// Usage: go-client URL CLIENTS STOP_FILE
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

func main() {
	url, stopFile := os.Args[1], os.Args[3]
	clients, _ := strconv.Atoi(os.Args[2])
	var mu sync.Mutex
	ok, errors := 0, map[string]int{}
	stopped := func() bool { _, err := os.Stat(stopFile); return err == nil }
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
			for !stopped() {
				kind := ""
				response, err := client.Get(url)
				if err != nil {
					kind = "get: " + err.Error()
				} else {
					_, err = io.Copy(io.Discard, response.Body)
					response.Body.Close()
					if err != nil {
						kind = "body: " + err.Error()
					} else if response.StatusCode != 200 {
						kind = fmt.Sprintf("status %d", response.StatusCode)
					}
				}
				mu.Lock()
				if kind == "" {
					ok++
				} else {
					errors[kind]++
				}
				mu.Unlock()
				time.Sleep(time.Duration(10+rand.Intn(90)) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	failed := 0
	for _, n := range errors {
		failed += n
	}
	line, _ := json.Marshal(map[string]any{"ok": ok, "failed": failed, "errors": errors})
	fmt.Println(string(line))
}
