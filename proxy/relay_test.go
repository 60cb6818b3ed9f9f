package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// TestProxyCopyDeliversWithoutWaiting: TLS records relayed from the
// upstream's side arrive unchanged and in order, whatever their sizes,
// and the last one is delivered although the sender then stays silent:
// the relay never waits for more data before it writes.
func TestProxyCopyDeliversWithoutWaiting(t *testing.T) {
	sendSide, src := tcpPair(t)
	dst, recvSide := tcpPair(t)
	cert, caPEM, err := proxytest.NewCertificate("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	server := tls.Server(sendSide, &tls.Config{Certificates: []tls.Certificate{cert}})
	client := tls.Client(src, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{sendSide, src, dst, recvSide} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}

	// Full records (a large literal), records that fill the idle buffer
	// exactly, small ones, and a short last one; nothing follows it.
	var want bytes.Buffer
	send := func(rec []byte) {
		want.Write(rec)
		if _, err := server.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		send(bytes.Repeat([]byte{byte('L' + i)}, maxRecordPlaintext))
	}
	send(bytes.Repeat([]byte{'I'}, idleBufferSize))
	for i := range 60 {
		rec := bytes.Repeat([]byte{byte('a' + i%26)}, 1024)
		rec[0] = byte(i)
		send(rec)
	}
	send([]byte("A1 OK done\r\n"))

	results := make(chan copyResult, 1)
	var counter atomic.Int64
	go proxyCopy(results, false, dst, client, []byte("* pending\r\n"), &counter)

	got := make([]byte, len("* pending\r\n")+want.Len())
	if _, err := io.ReadFull(recvSide, got); err != nil {
		t.Fatalf("after the sender went silent, the relay delivered %d of %d bytes: %v", counter.Load(), len(got), err)
	}
	if !bytes.Equal(got, append([]byte("* pending\r\n"), want.Bytes()...)) {
		t.Fatal("relayed bytes differ from the bytes sent")
	}
	server.Close()
	if r := <-results; r.err != nil || r.n != int64(len(got)) {
		t.Errorf("proxyCopy: %d bytes, %v", r.n, r.err)
	}
}
