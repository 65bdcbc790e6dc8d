// Centrifuge 0.15 peer for bench/run: the same workloads as the other peers.
//
//   rpc     -> RPC (method 9): the reply data is the request data (echo)
//   fanout  -> clients subscribe to channel "bench"; the publisher uses client
//              publish (method 3) without being subscribed
//   dm      -> each tab subscribes to its user channel "u_<user>"; a send is an
//              RPC {"to":..., "d":...} that the server publishes to the
//              recipient's and the sender's user channels (Centrifuge cannot
//              exclude the sending connection, so it gets its own copy: 6
//              deliveries per send with 3 tabs instead of 5)
//
// The user comes from ?user= (no tokens), like dev auth in PubSub.
// Built with Debian's packages: GO111MODULE=off GOPATH=<dir>:/usr/share/gocode.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/centrifugal/centrifuge"
)

type dmRequest struct {
	To string          `json:"to"`
	D  json.RawMessage `json:"d"`
}

func main() {
	addr := flag.String("addr", "0.0.0.0:8000", "listen address")
	flag.Parse()

	cfg := centrifuge.DefaultConfig
	cfg.LogLevel = centrifuge.LogLevelError
	cfg.LogHandler = func(e centrifuge.LogEntry) { log.Printf("%s: %+v", e.Message, e.Fields) }
	node, err := centrifuge.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnect(func(client *centrifuge.Client) {
		user := client.UserID()
		client.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
		client.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			cb(centrifuge.PublishReply{}, nil)
		})
		client.OnRPC(func(e centrifuge.RPCEvent, cb centrifuge.RPCCallback) {
			if len(e.Data) > 6 && string(e.Data[:6]) == `{"to":` {
				var req dmRequest
				if err := json.Unmarshal(e.Data, &req); err != nil {
					cb(centrifuge.RPCReply{}, centrifuge.ErrorBadRequest)
					return
				}
				_, _ = node.Publish("u_"+req.To, req.D)
				_, _ = node.Publish("u_"+user, req.D)
				cb(centrifuge.RPCReply{}, nil)
				return
			}
			cb(centrifuge.RPCReply{Data: e.Data}, nil)
		})
	})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}
	ws := centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
		WriteTimeout:    10 * time.Second,
	})
	mux := http.NewServeMux()
	mux.Handle("/connection/websocket", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if user == "" {
			user = "anonymous"
		}
		ctx := centrifuge.SetCredentials(r.Context(), &centrifuge.Credentials{UserID: user})
		ws.ServeHTTP(w, r.WithContext(ctx))
	}))
	srv := &http.Server{Addr: *addr, Handler: mux}
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	log.Printf("centrifuge peer listening on %s", *addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	_ = node.Shutdown(context.Background())
}
