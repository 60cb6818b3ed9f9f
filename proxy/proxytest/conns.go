package proxytest

import (
	"net"
	"sync"
)

// connServer accepts connections and serves each in a goroutine of its
// own, keeping track of them so that close can end them all and wait.
type connServer struct {
	ln    net.Listener
	serve func(net.Conn)
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// serveConns runs serve on every connection ln accepts, until close; serve
// need not close its connection.
func serveConns(ln net.Listener, serve func(net.Conn)) *connServer {
	s := &connServer{ln: ln, serve: serve, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *connServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serve(c)
		}()
	}
}

// close stops accepting, closes every connection and waits until their
// serve calls have returned. It returns the listener's Close error.
func (s *connServer) close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
