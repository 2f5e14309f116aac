// Validates custom resources (kinds the Kubernetes schemas of kubernetes-validate do not
// know) against the prometheus-operator CRD schemas, offline: the validators ship compiled
// in @kubernetes-models/prometheus-operator (generated from the CRDs' openAPIV3Schema).
//   node validate.mjs FILE...   exit 0: every custom resource valid; 1: an error.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};

let failed = false;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length > 0) {
      console.error(`${file}: YAML error: ${doc.errors[0].message}`);
      failed = true;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null || obj === undefined) continue;
    const id = `${obj.apiVersion}/${obj.kind}`;
    const Model = models[id];
    if (!Model) continue;
    checked += 1;
    try {
      new Model(obj).validate();
      console.log(`ok: ${file}: ${id} ${obj.metadata?.name}`);
    } catch (e) {
      failed = true;
      console.error(`${file}: ${id} ${obj.metadata?.name}: ${e.message}`);
    }
  }
}
if (checked === 0) {
  console.error("no custom resource found to validate");
  process.exit(1);
}
process.exit(failed ? 1 : 0);
