"""A stand-in for vLLM's OpenAI server in the `vlmtune serve --engine vllm` tests: started as
`python fake_vllm.py -m vllm.entrypoints.openai.api_server --model DIR --port P ...` (what a fake `--vllm-python`
runs), it writes its argv and pid to $FAKE_VLLM_RECORD, answers /health, /version, /v1/models (the
--served-model-name) and chat completions (the number of images and the last text of the request), and exits 0 on
SIGINT like vLLM. With $FAKE_VLLM_FAIL it prints that message and exits 1 before answering."""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys

argv = sys.argv[1:]
record = os.environ["FAKE_VLLM_RECORD"]
with open(record, "w") as f:
    json.dump({"argv": argv, "pid": os.getpid()}, f)
if os.environ.get("FAKE_VLLM_FAIL"):
    print(os.environ["FAKE_VLLM_FAIL"], flush=True)
    sys.exit(1)
port = int(argv[argv.index("--port") + 1])
name = argv[argv.index("--served-model-name") + 1]


class Handler(http.server.BaseHTTPRequestHandler):
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
        routes = {"/health": {}, "/version": {"version": "fake-0.32"},
                  "/v1/models": {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "vllm"}]}}
        self._send(routes.get(self.path, {"error": "not found"}), 200 if self.path in routes else 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = body["messages"][-1]["content"]
        images = sum(p["type"] == "image_url" for p in parts)
        text = [p["text"] for p in parts if p["type"] == "text"][-1]
        self._send({"choices": [{"message": {"role": "assistant", "content": f"{images} image(s): {text}"},
                                 "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 3}})


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
signal.signal(signal.SIGINT, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
