package proxy

import (
	"bufio"
	"bytes"
	"io"
	"sync"
)

// lineBufferSize is the buffer of the pre-auth reader and writer, and of
// the reader of the upstream's responses during its login.
const lineBufferSize = 4096

// lineReaders and lineWriters recycle the buffered readers and writers a
// session needs only until it relays, so that a login allocates none and
// a relayed session holds none.
var (
	lineReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, lineBufferSize) }}
	lineWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, lineBufferSize) }}
)

// newLineReader returns a pooled reader of r; putLineReader gives it back.
func newLineReader(r io.Reader) *bufio.Reader {
	br := lineReaders.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

// putLineReader returns br to the pool; its caller must not use it again.
// nil is ignored.
func putLineReader(br *bufio.Reader) {
	if br != nil {
		br.Reset(nil) // drop the connection
		lineReaders.Put(br)
	}
}

// newLineWriter returns a pooled writer to w; putLineWriter gives it back.
func newLineWriter(w io.Writer) *bufio.Writer {
	bw := lineWriters.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

// putLineWriter returns bw to the pool, dropping anything unflushed; its
// caller must not use it again. nil is ignored.
func putLineWriter(bw *bufio.Writer) {
	if bw != nil {
		bw.Reset(nil)
		lineWriters.Put(bw)
	}
}

// takeBuffered returns a copy of what br holds unread (nil if nothing, or
// if br is nil), so that br can go back to its pool before the bytes are
// passed on.
func takeBuffered(br *bufio.Reader) []byte {
	if br == nil {
		return nil
	}
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := br.Peek(n)
	return bytes.Clone(b)
}
