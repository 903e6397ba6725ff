// Public entry point of @ledgerflow/sdk. The generated modules under ./gen are rewritten by
// scripts/generate.sh from proto/; only the message types are re-exported here for now.
export * from "./gen/ledgerflow/v1/common_pb.js";
export * from "./gen/ledgerflow/v1/ledger_pb.js";
