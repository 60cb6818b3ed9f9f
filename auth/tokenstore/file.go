package tokenstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// recordSuffix ends the name of every record file.
	recordSuffix = ".token"
	// maxRecordSize bounds what is read of a record file.
	maxRecordSize = 1 << 20
)

// recordFileName escapes login into a file name that cannot be ".", "..",
// hidden, or contain a path separator.
func recordFileName(login string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(login) + len(recordSuffix)) // enough unless a byte is escaped
	for i := 0; i < len(login); i++ {
		c := login[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '@', c == '_', c == '+', c == '=', c == '-',
			c == '.' && i > 0:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
		}
	}
	b.WriteString(recordSuffix)
	return b.String()
}

// fileBackend keeps records as files in a directory, one per login. It is
// not Shared: one daemon per directory (the CLI may write beside it).
type fileBackend struct {
	dir     string
	writeMu sync.Mutex // serializes check-and-replace of record files (see lock)

	// beforeRename, if set (by tests), runs on the synced and closed
	// temporary file; an error fails the write there.
	beforeRename func(tmp string) error
}

func (s *fileBackend) path(login string) string {
	return filepath.Join(s.dir, recordFileName(login))
}

// Read reads login's record file.
func (s *fileBackend) Read(_ context.Context, login string) ([]byte, error) {
	data, _, err := s.readStamped(login)
	return data, err
}

// readStamped is Read, and also returns the stamp of the file it read.
func (s *fileBackend) readStamped(login string) ([]byte, fileStamp, error) {
	data, stamp, err := readRecordFile(s.path(login))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fileStamp{}, fmt.Errorf("%w: %w", ErrNoRecord, err)
	}
	return data, stamp, err
}

// stamp returns the stamp of login's record file, without opening it or
// following a link. ok is false if there is no regular file to stamp.
func (s *fileBackend) stamp(login string) (stamp fileStamp, ok bool) {
	var st unix.Stat_t
	if err := unix.Lstat(s.path(login), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fileStamp{}, false
	}
	return stampOf(&st), true
}

// fileStamp identifies one version of a record file. Writers replace a
// record by renaming a new file over it, which has another inode number
// while both exist; a change in place moves the size or the times, and
// always the change time (ctime), which no user can set.
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds since the epoch
}

func stampOf(st *unix.Stat_t) fileStamp {
	return fileStamp{dev: uint64(st.Dev), ino: uint64(st.Ino), size: int64(st.Size),
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

// settled reports whether the file's last change (ctime) came at least
// margin before readAt, a time taken before the file was read. Only then
// does an equal stamp later prove the same content: file systems keep
// times in coarse steps (a clock tick, or up to 2 s), so a change made
// within the step of the one stamped could carry the same times, and a
// freed inode number can come back. Any change after readAt has a later
// ctime than a settled stamp's.
func (st fileStamp) settled(readAt time.Time, margin time.Duration) bool {
	return st.ctime < readAt.Add(-margin).UnixNano()
}

// Replace runs fn on login's file under the directory lock and replaces
// the file atomically with what it returns.
func (s *fileBackend) Replace(ctx context.Context, login string, fn func(old []byte) ([]byte, uint64, error)) (bool, error) {
	unlock, err := s.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	old, err := s.Read(ctx, login)
	switch {
	case errors.Is(err, ErrNoRecord):
		old = nil
	case err != nil:
		return false, err
	}
	data, _, err := fn(old)
	if err != nil {
		return false, err
	}
	return s.replaceFile(recordFileName(login), data)
}

// Logins lists the logins of the record files in the directory.
func (s *fileBackend) Logins(context.Context) ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("listing token store directory: %w", err)
	}
	var logins []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, recordSuffix) {
			continue
		}
		if login, ok := loginFromFileName(name); ok {
			logins = append(logins, login)
		}
	}
	return logins, nil
}

// LockRefresh does nothing: one daemon uses a directory, and its token
// sources serialize their own refreshes.
func (s *fileBackend) LockRefresh(context.Context, string) (func(), error) { return func() {}, nil }

// Shared is false: a directory belongs to one daemon.
func (s *fileBackend) Shared() bool { return false }

// Close does nothing.
func (s *fileBackend) Close() error { return nil }

// loginFromFileName inverts recordFileName.
func loginFromFileName(name string) (string, bool) {
	name = strings.TrimSuffix(name, recordSuffix)
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if name[i] != '%' {
			b.WriteByte(name[i])
			continue
		}
		if i+2 >= len(name) {
			return "", false
		}
		v, err := strconv.ParseUint(name[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), b.Len() > 0
}

// lock serializes writes to the store: within this process, and with
// other processes on the same directory (the CLI beside the daemon), by an
// exclusive flock on the directory. It returns the release.
func (s *fileBackend) lock() (func(), error) {
	s.writeMu.Lock()
	d, err := os.Open(s.dir)
	if err != nil {
		s.writeMu.Unlock()
		return nil, fmt.Errorf("opening token store directory to lock it: %w", err)
	}
	for {
		err = unix.Flock(int(d.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		d.Close()
		s.writeMu.Unlock()
		return nil, fmt.Errorf("locking token store directory: %w", err)
	}
	return func() {
		d.Close() // releases the flock
		s.writeMu.Unlock()
	}, nil
}

// replaceFile atomically replaces name in the store directory with data:
// temporary file in the same directory (mode 0600), write, fsync, close,
// rename, fsync the directory. On failure before the rename the temporary
// file is removed and the old file is untouched. renamed reports whether
// the new file is in place.
func (s *fileBackend) replaceFile(name string, data []byte) (renamed bool, err error) {
	// Temporary names start with '.', which escaped logins never do.
	f, err := os.CreateTemp(s.dir, "."+name+".tmp*")
	if err != nil {
		return false, fmt.Errorf("creating temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if !renamed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return false, fmt.Errorf("setting mode of temporary file: %w", err)
	}
	if err := matchDirOwner(f, s.dir); err != nil {
		return false, err
	}
	if _, err := f.Write(data); err != nil {
		return false, fmt.Errorf("writing temporary file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return false, fmt.Errorf("syncing temporary file: %w", err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("closing temporary file: %w", err)
	}
	if s.beforeRename != nil {
		if err := s.beforeRename(tmp); err != nil {
			return false, err
		}
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		return false, fmt.Errorf("renaming temporary file: %w", err)
	}
	renamed = true
	if err := syncDir(s.dir); err != nil {
		return true, fmt.Errorf("syncing token store directory: %w", err)
	}
	return true, nil
}

// staleTempAge is how old a temporary record file must be before New
// removes it: younger ones may belong to a write in progress in another
// process (the CLI next to the daemon).
const staleTempAge = time.Minute

// removeStaleTemps deletes temporary files left by writes that crashed
// before their rename. They hold superseded (encrypted) records.
func removeStaleTemps(dir string, now time.Time) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, ".") || !strings.Contains(name, recordSuffix+".tmp") || !e.Type().IsRegular() {
			continue
		}
		if info, err := e.Info(); err == nil && now.Sub(info.ModTime()) > staleTempAge {
			os.Remove(filepath.Join(dir, name))
		}
	}
}

// matchDirOwner gives f the owner of dir when root writes into a directory
// that belongs to another user, so that `token import` run by root leaves
// records the service's own (possibly dynamic) user can read.
func matchDirOwner(f *os.File, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("reading token store directory owner: %w", err)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("giving the record the directory's owner: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// readRecordFile reads the record file at path, opened as openRecordFile
// does, and returns the stamp of the file it read. A file larger than
// maxRecordSize is an error wrapping ErrCorruptRecord.
func readRecordFile(path string) ([]byte, fileStamp, error) {
	f, stamp, err := openRecordFile(path)
	if err != nil {
		return nil, fileStamp{}, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxRecordSize+1)); err != nil {
		return nil, fileStamp{}, fmt.Errorf("reading record file: %w", err)
	}
	if buf.Len() > maxRecordSize {
		return nil, fileStamp{}, fmt.Errorf("%w: file larger than %d bytes", ErrCorruptRecord, maxRecordSize)
	}
	return buf.Bytes(), stamp, nil
}

// openRecordFile opens a record for reading and returns its stamp. It
// follows no symbolic link and does not wait on a FIFO or a device
// (O_NOFOLLOW|O_NONBLOCK), and it refuses anything but a regular file:
// whoever could put one there must not be able to make a login hang or
// read another file.
func openRecordFile(path string) (*os.File, fileStamp, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fileStamp{}, fmt.Errorf("%w: %s is a symbolic link", ErrNotRegular, path)
	}
	if err != nil {
		return nil, fileStamp{}, err
	}
	var st unix.Stat_t
	err = fstat(f, &st)
	switch {
	case err != nil:
		f.Close()
		return nil, fileStamp{}, fmt.Errorf("reading record file: %w", err)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		kind := "special file"
		if info, err := f.Stat(); err == nil {
			kind = info.Mode().Type().String()
		}
		f.Close()
		return nil, fileStamp{}, fmt.Errorf("%w: %s is a %s", ErrNotRegular, path, kind)
	}
	return f, stampOf(&st), nil
}

// fstat fills st for the open file f.
func fstat(f *os.File, st *unix.Stat_t) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var statErr error
	if err := rc.Control(func(fd uintptr) { statErr = unix.Fstat(int(fd), st) }); err != nil {
		return err
	}
	return statErr
}

// checkStoreDir refuses a token store directory that others could write
// to: one that is group- or world-writable, or owned by another user than
// this process's (or root). Such a directory would let them replace
// records, or plant FIFOs and links where records are read.
func checkStoreDir(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("checking token store directory: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("token store directory %s is not a directory", dir)
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("token store directory %s is group- or world-writable (mode %04o); run: chmod go-w %s", dir, perm, dir)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if euid := os.Geteuid(); ok && euid != 0 && st.Uid != 0 && int(st.Uid) != euid {
		return fmt.Errorf("token store directory %s belongs to uid %d, not to this user (uid %d) or root", dir, st.Uid, euid)
	}
	return nil
}
