/**
 * Coordinator addresses and the gRPC transport to them.
 *
 * @module
 */
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { Transport } from "@connectrpc/connect";

/** Turns `host:port` into the `http://host:port` base URL connect-node wants; URLs pass through. */
export function baseUrl(address: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(address) ? address : `http://${address}`;
}

/** A gRPC (HTTP/2) transport with the session it runs on, so its owner can close it. */
export interface OwnedTransport {
  readonly transport: Transport;
  /** Closes the HTTP/2 session; calls still open on it fail. */
  close(): void;
}

/**
 * Opens a transport on its own HTTP/2 session. The gRPC protocol is the one grpcio servers
 * speak (Connect and gRPC-Web are not understood by the Python coordinator).
 */
export function grpcTransport(address: string): OwnedTransport {
  const url = baseUrl(address);
  const sessionManager = new Http2SessionManager(url);
  const transport = createGrpcTransport({
    baseUrl: url,
    sessionManager,
    // Journals and snapshots of long runs exceed the 4 MiB default of other gRPC stacks.
    readMaxBytes: 0x7fffffff,
  });
  return { transport, close: () => sessionManager.abort() };
}
