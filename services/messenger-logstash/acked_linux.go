package logstash

import (
	"net"

	"golang.org/x/sys/unix"
)

// ackedBytes returns how many bytes the peer's TCP has acknowledged on c
// (tcpi_bytes_acked, Linux 4.1+). Unlike the send queue length, it never
// goes backwards or jumps when a reset purges the queue, so it can say
// which bytes reached the peer even after the connection died.
func ackedBytes(c *net.TCPConn) (int64, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var (
		info *unix.TCPInfo
		gerr error
	)
	if err := rc.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || gerr != nil {
		return 0, false
	}
	return int64(info.Bytes_acked), true
}
