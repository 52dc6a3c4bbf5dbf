#!/usr/bin/env python3
"""An HTTP-like client for the lingering-close test: it sends a request line
and then a large upload, reading nothing until the upload is done (or the
server ended the connection under it), then reads the reply to its end.

Prints:
  UPLOAD done | UPLOAD failed <description>
  RECEIVED <bytes> <how>   how: close_notify (recv gave b''), eof_error
                           (SSLEOFError), error <description>
"""
import argparse
import socket
import ssl


def say(line):
    print(line, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--version", choices=["1.2", "1.3"], required=True)
    p.add_argument("--upload", type=int, default=8 << 20, help="bytes to upload after the request")
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.cafile)
    version = ssl.TLSVersion.TLSv1_3 if a.version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    raw = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    # A small receive buffer: the reply cannot all land in it while we upload.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    tls = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    tls.sendall(b"request\n")
    try:
        tls.sendall(b"u" * a.upload)
        say("UPLOAD done")
    except (OSError, ssl.SSLError) as e:
        say(f"UPLOAD failed {type(e).__name__}")
    received = 0
    how = "?"
    try:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                how = "close_notify"
                break
            received += len(chunk)
    except ssl.SSLEOFError:
        how = "eof_error"
    except (OSError, ssl.SSLError) as e:
        how = f"error {type(e).__name__}"
    say(f"RECEIVED {received} {how}")


if __name__ == "__main__":
    main()
