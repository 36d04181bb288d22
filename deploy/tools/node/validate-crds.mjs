#!/usr/bin/env node
// Validate custom resources offline against the schemas generated from the operators'
// Go API types and shipped in @kubernetes-models/{prometheus-operator,keda}.
//
// Usage: node validate-crds.mjs < objects.json
//   stdin: a JSON array of Kubernetes objects (e.g. `kubectl kustomize` output, parsed).
//   stdout: one line per object, "ok KIND/NAME" or "FAIL KIND/NAME: reason".
//   exit status: 0 when every object is valid, 1 when one is invalid or of a kind this
//   script has no schema for (so nothing is passed over silently), 2 on bad input.
//
// These schemas check types, required fields, enums and patterns (durations, label
// names, ...). Like the CRDs in a cluster they do not reject unknown fields.
import { readFileSync } from "node:fs";

import {
  PodMonitor,
  PrometheusRule,
  ServiceMonitor,
} from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import {
  ScaledJob,
  ScaledObject,
  TriggerAuthentication,
} from "@kubernetes-models/keda/keda.sh/v1alpha1";

const MODELS = new Map(
  [PodMonitor, PrometheusRule, ServiceMonitor, ScaledJob, ScaledObject, TriggerAuthentication].map(
    (model) => [`${model.apiVersion}/${model.kind}`, model],
  ),
);

function check(object) {
  const kind = `${object?.apiVersion}/${object?.kind}`;
  const model = MODELS.get(kind);
  if (model === undefined) {
    const known = [...MODELS.keys()].join(", ");
    return `no schema for ${kind} (this script knows ${known})`;
  }
  try {
    new model(object).validate();
    return null;
  } catch (error) {
    return error.message;
  }
}

let objects;
try {
  objects = JSON.parse(readFileSync(0, "utf8"));
} catch (error) {
  console.error(`validate-crds: stdin is not JSON: ${error.message}`);
  process.exit(2);
}
if (!Array.isArray(objects)) {
  console.error("validate-crds: stdin must be a JSON array of objects");
  process.exit(2);
}

let failed = 0;
for (const object of objects) {
  const name = `${object?.kind}/${object?.metadata?.name}`;
  const problem = check(object);
  if (problem === null) {
    console.log(`ok ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${name}: ${problem}`);
  }
}
process.exit(failed === 0 ? 0 : 1);
