package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// notifier sends sd_notify(3) state changes to systemd (Type=notify); it
// does nothing when NOTIFY_SOCKET is not set.
type notifier struct {
	addr string
}

func newNotifier() *notifier { return &notifier{addr: os.Getenv("NOTIFY_SOCKET")} }

// send writes state (for example "READY=1") to the notify socket.
func (n *notifier) send(state string) error {
	if n.addr == "" {
		return nil
	}
	name := n.addr
	if name[0] == '@' { // abstract socket
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("connecting to NOTIFY_SOCKET: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notifying systemd: %w", err)
	}
	return nil
}

// reloading returns the message that starts a reload: RELOADING=1 with the
// monotonic timestamp systemd's Type=notify-reload expects.
func reloading() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "RELOADING=1"
	}
	usec := time.Duration(ts.Nano()) / time.Microsecond
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(int64(usec), 10)
}
