// Peer resumable-upload server for the RelayPACS benchmark (`uv run python -m bench`).
//
// A stock @tus/server with the stock @tus/file-store: it neither verifies a checksum nor
// fsyncs, so it is the "plain resumable upload over HTTP" baseline the gateway is compared to.
//
// Usage: node server.mjs --dir DIR [--host 127.0.0.1] [--port 0]
// Prints one JSON line {"event": "listening", "host": ..., "port": ..., "pid": ...} on stdout
// once it accepts connections; stops on SIGTERM / SIGINT.
import http from 'node:http';
import process from 'node:process';
import { parseArgs } from 'node:util';

import { FileStore } from '@tus/file-store';
import { Server } from '@tus/server';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
  },
});

if (!values.dir) {
  console.error('server.mjs: --dir is required');
  process.exit(2);
}
if (!values.host.startsWith('127.') && values.host !== 'localhost') {
  console.error('server.mjs: only loopback addresses are allowed');
  process.exit(2);
}

const tus = new Server({
  path: '/files',
  datastore: new FileStore({ directory: values.dir }),
  relativeLocation: true,
});

const server = http.createServer((req, res) => {
  tus.handle(req, res).catch((err) => {
    console.error('server.mjs: request failed', err);
    if (!res.headersSent) {
      res.statusCode = 500;
    }
    res.end();
  });
});
// Large bodies on a loopback link: no request timeout, keep-alive like a real deployment.
server.requestTimeout = 0;
server.keepAliveTimeout = 65_000;

server.listen(Number(values.port), values.host, () => {
  const addr = server.address();
  process.stdout.write(
    `${JSON.stringify({ event: 'listening', host: addr.address, port: addr.port, pid: process.pid })}\n`,
  );
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
