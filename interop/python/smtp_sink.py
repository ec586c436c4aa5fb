"""A real SMTP server for the mail tests (aiosmtpd): accepts every message on 127.0.0.1:<port> and
writes each into <dir> as <n>.eml (as received) and <n>.json (envelope recipients, From, Subject and
the decoded text body), then prints "ready" once it is listening.

    python3 smtp_sink.py <port> <dir>
"""

import email
import email.policy
import json
import pathlib
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out: pathlib.Path):
        self.out = out
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        body = envelope.original_content or envelope.content
        (self.out / f"{self.n}.eml").write_bytes(body)
        msg = email.message_from_bytes(body, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        summary = {
            "to": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "subject": str(msg["Subject"]),
            "text": part.get_content() if part is not None else "",
        }
        tmp = self.out / f"{self.n}.tmp"
        tmp.write_text(json.dumps(summary))
        tmp.rename(self.out / f"{self.n}.json")
        return "250 OK"


def main() -> None:
    port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(out), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
