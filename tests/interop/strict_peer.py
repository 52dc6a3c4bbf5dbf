#!/usr/bin/env python3
"""A strict TLS peer for tls_stream's interop tests, on Python's ssl module.

Strict: suppress_ragged_eofs=False and OP_IGNORE_UNEXPECTED_EOF cleared, so
a transport that ends without close_notify raises SSLEOFError instead of
reading as b''.

One exchange, then one way of ending, each reported on a line of its own:
  LISTENING <port>      (server) bound to 127.0.0.1:<port>, port chosen by the kernel
  EXCHANGED             sent a line and got it back (client), or echoed one (server)
  OUTCOME <what>        how the ending went:
    --then read:    recv() until the end: close_notify (recv gave b''),
                    eof_error (SSLEOFError), error <description>
    --then unwrap:  we close first and wait for the answer (SSL_shutdown):
                    unwrap_complete, unwrap_eof (SSLEOFError), unwrap_error <description>
  ANSWER <what>         after a close_notify, with --answer: answered (our
                        close_notify went out: unwrap() succeeded) or failed <description>;
                        without --answer the socket is closed with no alert.
"""
import argparse
import socket
import ssl
import sys


def say(line):
    print(line, flush=True)


def describe(e):
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=["client", "server"], required=True)
    p.add_argument("--version", choices=["1.2", "1.3"], required=True)
    p.add_argument("--port", type=int, help="client: the port to connect to")
    p.add_argument("--cafile", help="client: trust anchor for the server's certificate")
    p.add_argument("--cert", help="server: certificate chain (PEM)")
    p.add_argument("--key", help="server: private key (PEM)")
    p.add_argument("--then", choices=["read", "unwrap"], required=True)
    p.add_argument("--answer", action="store_true", help="answer the peer's close_notify with ours")
    p.add_argument("--timeout", type=float, default=10.0, help="bound on every socket operation")
    a = p.parse_args()

    version = ssl.TLSVersion.TLSv1_3 if a.version == "1.3" else ssl.TLSVersion.TLSv1_2
    if a.role == "server":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(a.cafile)
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF

    if a.role == "server":
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(a.timeout)
        say(f"LISTENING {listener.getsockname()[1]}")
        raw, _ = listener.accept()
        listener.close()
        raw.settimeout(a.timeout)
        tls = ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
    else:
        raw = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
        tls = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)

    # A realistic exchange: one line each way, so that TLS 1.3 session
    # tickets and the handshake's last flight have been read by both ends.
    if a.role == "client":
        line = b"ping from python\n"
        tls.sendall(line)
        got = b""
        while not got.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            got += chunk
        if got != line:
            say(f"OUTCOME error echo mismatch {got!r}")
            return 1
    else:
        got = b""
        while not got.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            got += chunk
        tls.sendall(got)
    say("EXCHANGED")

    if a.then == "unwrap":
        try:
            tls.unwrap()
            say("OUTCOME unwrap_complete")
        except ssl.SSLEOFError:
            say("OUTCOME unwrap_eof")
        except (OSError, ssl.SSLError) as e:
            say(f"OUTCOME unwrap_error {describe(e)}")
        return 0

    try:
        while True:
            data = tls.recv(4096)
            if not data:
                break
        say("OUTCOME close_notify")
    except ssl.SSLEOFError:
        say("OUTCOME eof_error")
        return 0
    except (OSError, ssl.SSLError) as e:
        say(f"OUTCOME error {describe(e)}")
        return 0

    if a.answer:
        try:
            tls.unwrap()
            say("ANSWER answered")
        except (OSError, ssl.SSLError) as e:
            say(f"ANSWER failed {describe(e)}")
    else:
        tls.close()  # Python never sends close_notify unless unwrap() is called
    return 0


if __name__ == "__main__":
    sys.exit(main())
