"""A stand-in for vLLM's OpenAI server, for the tests of `vlmtune eval --url` and `vlmtune serve --engine vllm`.

`handler(name, seen)` is the request handler: /health, /version, /v1/models (the served `name`), vLLM's /tokenize
(one token per character) and a chat completion that answers with the shape of the request (how many images it
carried, its last text: "1 image(s): What colour?"), `finish_reason` "length" below 3 max_tokens; every chat body
is appended to `seen`. tests/serve/test_remote_eval.py serves it in a thread.

Started as a script, `python fake_vllm.py -m vllm.entrypoints.openai.api_server --model DIR --port P
--served-model-name NAME ...` (what a fake `--vllm-python` runs), it writes its argv and pid to $FAKE_VLLM_RECORD,
serves on P, and exits 0 on SIGINT like vLLM; with $FAKE_VLLM_FAIL it prints that message and exits 1 first."""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys

VERSION = "0.32.0"


def handler(name: str, seen: list | None = None) -> type[http.server.BaseHTTPRequestHandler]:
    class FakeVllm(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, obj, code=200):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            routes = {"/health": {}, "/version": {"version": VERSION},
                      "/v1/models": {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "vllm"}]}}
            self._send(routes.get(self.path, {"error": "not found"}), 200 if self.path in routes else 404)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize":  # one token per character
                self._send({"tokens": list(range(len(body["prompt"]))), "count": len(body["prompt"])})
                return
            if seen is not None:
                seen.append(body)
            parts = body["messages"][-1]["content"]
            images = sum(p["type"] == "image_url" for p in parts)
            text = [p["text"] for p in parts if p["type"] == "text"][-1]
            self._send({"choices": [{"message": {"role": "assistant", "content": f"{images} image(s): {text}"},
                                     "finish_reason": "length" if body["max_tokens"] < 3 else "stop"}],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 2}})

    return FakeVllm


def main() -> None:
    argv = sys.argv[1:]
    with open(os.environ["FAKE_VLLM_RECORD"], "w") as f:
        json.dump({"argv": argv, "pid": os.getpid()}, f)
    if os.environ.get("FAKE_VLLM_FAIL"):
        print(os.environ["FAKE_VLLM_FAIL"], flush=True)
        sys.exit(1)
    port = int(argv[argv.index("--port") + 1])
    name = argv[argv.index("--served-model-name") + 1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler(name))
    signal.signal(signal.SIGINT, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
