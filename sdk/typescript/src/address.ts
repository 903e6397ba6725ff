/**
 * Coordinator addresses, how a connection presents itself (bearer token, TLS), and the gRPC
 * transport built from them.
 *
 * @module
 */
import { X509Certificate } from "node:crypto";
import type { SecureClientSessionOptions } from "node:http2";
import { createSecureContext } from "node:tls";

import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { InvalidArgumentError } from "./errors.js";

/** TLS material for a connection: what to trust, and what to present for mutual TLS. */
export interface TlsOptions {
  /**
   * CA certificates (PEM, one or more) that may sign the coordinator's certificate; they
   * replace Node's bundled root certificates. Default: Node's roots.
   */
  ca?: string | Buffer;
  /** This client's certificate chain (PEM), for a coordinator that requires mutual TLS. Needs `key`. */
  cert?: string | Buffer;
  /** The private key (PEM) of `cert`. */
  key?: string | Buffer;
}

/**
 * How a {@link Client} or {@link StepWorker} presents itself to the coordinator. The names follow
 * the Python SDK's `token=` and `tls=`; its `credentials=` (grpc channel credentials) has no
 * counterpart in Node, so an object for `tls` carries the same material.
 */
export interface ConnectionOptions {
  /**
   * A bearer token, sent as `authorization: Bearer <token>` on every call and stream, for a
   * coordinator started with `--auth-tokens`. Workers need one with the `worker` scope, clients
   * one with `client`. Default: none. The SDK never puts it in a log line or an error message.
   */
  token?: string;
  /**
   * Connect over TLS: `true` verifies the coordinator against Node's root certificates; an
   * object can name the CA to trust and a client certificate (mutual TLS). An `https://`
   * address implies `true`; an `http://` address forbids TLS. Default: plaintext for
   * `host:port`.
   */
  tls?: boolean | TlsOptions;
}

/** A validated address with its connection options: what each HTTP/2 session is opened with. */
export interface Connection {
  /** The base URL connect-node wants: `http://host:port` or `https://host:port`. */
  readonly url: string;
  /** `http2.connect` options (the TLS material); empty for plaintext. */
  readonly session: SecureClientSessionOptions;
  /** Sets the `authorization` header, when there is a token. */
  readonly interceptors: readonly Interceptor[];
}

const SCHEME = /^([a-z][a-z0-9+.-]*):\/\//i;
// A gRPC metadata value is printable ASCII, and a token with a space or a control character
// would be sent mangled or refused by Node's header check, naming neither the token nor why.
const TOKEN = /^[\x21-\x7e]+$/;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/**
 * Turns `host:port` into the `http://host:port` base URL connect-node wants (`https://` with
 * `tls`); URLs pass through.
 */
export function baseUrl(address: string, tls = false): string {
  return SCHEME.test(address) ? address : `${tls ? "https" : "http"}://${address}`;
}

/**
 * Checks an address and its options and resolves them into a {@link Connection}. No I/O.
 *
 * @throws {@link InvalidArgumentError} naming the option (`address`, `token`, `tls`, `tls.ca`,
 *   `tls.cert`, `tls.key`) that is malformed or contradicts another. Messages never include the
 *   token or key material.
 */
export function resolveConnection(address: string, options: ConnectionOptions = {}): Connection {
  const scheme = SCHEME.exec(address)?.[1]?.toLowerCase();
  if (scheme !== undefined && scheme !== "http" && scheme !== "https") {
    throw new InvalidArgumentError("address", `unsupported scheme ${scheme}://; give host:port, http:// or https://`);
  }
  const tlsAsked = options.tls !== undefined && options.tls !== false;
  if (scheme === "http" && tlsAsked) {
    throw new InvalidArgumentError("tls", "the address is http:// (plaintext); give host:port or an https:// address");
  }
  const secure = scheme === "https" || tlsAsked;
  const material = typeof options.tls === "object" ? options.tls : {};
  const session = secure ? checkTls(material) : {};
  return {
    url: baseUrl(address, secure),
    session,
    interceptors: options.token === undefined ? [] : [bearer(options.token)],
  };
}

function bearer(token: string): Interceptor {
  if (!TOKEN.test(token)) {
    throw new InvalidArgumentError("token", "must be non-empty printable ASCII without whitespace");
  }
  const value = `Bearer ${token}`;
  // Interceptors run for unary calls and for every kind of stream alike.
  return (next) => (request) => {
    request.header.set("authorization", value);
    return next(request);
  };
}

function checkTls(tls: TlsOptions): SecureClientSessionOptions {
  const { ca, cert, key } = tls;
  if (cert !== undefined && key === undefined) {
    throw new InvalidArgumentError("tls.key", "a client certificate needs its private key");
  }
  if (key !== undefined && cert === undefined) {
    throw new InvalidArgumentError("tls.cert", "a private key needs its certificate");
  }
  if (ca !== undefined) {
    // Node trusts nothing, silently, when `ca` holds no parsable certificate: every handshake
    // would then fail with a verification error far from the mistake.
    const pems = String(ca).match(PEM_CERTIFICATE) ?? [];
    if (pems.length === 0) throw new InvalidArgumentError("tls.ca", "holds no PEM certificate");
    pems.forEach((pem, i) => {
      try {
        new X509Certificate(pem);
      } catch (err) {
        throw new InvalidArgumentError("tls.ca", `certificate ${i + 1} does not parse: ${reason(err)}`);
      }
    });
  }
  const session: SecureClientSessionOptions = {};
  if (ca !== undefined) session.ca = ca;
  if (cert !== undefined && key !== undefined) {
    session.cert = cert;
    session.key = key;
    try {
      // Parses the chain and the key and checks that they belong together.
      createSecureContext({ cert, key });
    } catch (err) {
      throw new InvalidArgumentError("tls.cert", `unusable client certificate or key: ${reason(err)}`);
    }
  }
  return session;
}

function reason(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
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
export function grpcTransport(connection: Connection): OwnedTransport {
  const sessionManager = new Http2SessionManager(connection.url, undefined, connection.session);
  const transport = createGrpcTransport({
    baseUrl: connection.url,
    sessionManager,
    interceptors: [...connection.interceptors],
    // Journals and snapshots of long runs exceed the 4 MiB default of other gRPC stacks.
    readMaxBytes: 0x7fffffff,
  });
  return { transport, close: () => sessionManager.abort() };
}
