// Renders /openapi.json readably: operations grouped by tag, each with its
// parameters, request body and responses (schemas shown as compact types).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function resolve(doc, schema) {
    if (schema && schema.$ref) {
      const name = schema.$ref.split("/").pop();
      return doc.components.schemas[name];
    }
    return schema;
  }

  // A schema as a short, indented type description.
  function typeOf(doc, schema, indent) {
    const pad = "  ".repeat(indent);
    schema = resolve(doc, schema) || {};
    const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
    if (type === "array") return typeOf(doc, schema.items, indent) + "[]";
    if (type === "object" || schema.properties) {
      const props = Object.entries(schema.properties || {});
      const extra = schema.additionalProperties;
      if (!props.length) {
        return extra && typeof extra === "object" ? "{ <key>: " + typeOf(doc, extra, indent) + " }" : "object";
      }
      const required = new Set(schema.required || []);
      const lines = props.map(([k, v]) => pad + "  " + k + (required.has(k) ? "" : "?") + ": " + typeOf(doc, v, indent + 1));
      if (extra && typeof extra === "object") lines.push(pad + "  <field>: " + typeOf(doc, extra, indent + 1));
      return "{\n" + lines.join(",\n") + "\n" + pad + "}";
    }
    let text = type || "any";
    if (schema.format) text += " (" + schema.format + ")";
    if (schema.contentMediaType) text = "file";
    if (schema.maximum !== undefined) text += " ≤ " + schema.maximum;
    return text;
  }

  function content(doc, c) {
    return Object.entries(c || {}).map(([media, m]) =>
      el("div", {}, el("code", {}, media), el("pre", { class: "schema" }, typeOf(doc, m.schema, 0))));
  }

  function operation(doc, path, method, op) {
    const ws = op["x-websocket"];
    const label = ws ? "WS" : method.toUpperCase();
    const body = el("div", { class: "body" });
    if (op.description) body.append(el("p", {}, op.description));
    const security = (op.security || []).map((s) => Object.keys(s)[0]).filter(Boolean);
    body.append(el("p", { class: "muted" }, "auth: " + (security.length ? security.join(" or ") +
      ((op.security || []).some((s) => !Object.keys(s).length) ? " (when required)" : "") : "none")));
    if (op.parameters && op.parameters.length) {
      body.append(el("h3", {}, "Parameters"), el("table", { class: "list" },
        el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "description"))),
        el("tbody", {}, ...op.parameters.map((p) => el("tr", {},
          el("td", {}, el("code", {}, p.name + (p.required ? "" : "?"))), el("td", {}, p.in),
          el("td", {}, typeOf(doc, p.schema, 0)), el("td", {}, p.description || ""))))));
    }
    if (op.requestBody) {
      body.append(el("h3", {}, "Request body"), el("p", {}, op.requestBody.description || ""),
        ...content(doc, op.requestBody.content));
    }
    body.append(el("h3", {}, "Responses"));
    for (const [status, r] of Object.entries(op.responses || {})) {
      body.append(el("div", { class: "response" }, el("b", {}, status), " ", r.description), ...content(doc, r.content));
    }
    return el("details", { class: "op", id: op.operationId },
      el("summary", {}, el("span", { class: "method method-" + (ws ? "ws" : method) }, label), " ",
        el("code", { class: "path" }, path), " — ", op.summary), body);
  }

  function render(doc) {
    $("api-title").textContent = doc.info.title + " API " + doc.info.version;
    $("api-description").textContent = doc.info.description || "";
    $("api-meta").textContent = "OpenAPI " + doc.openapi + " · server " + (doc.servers || []).map((s) => s.url).join(", ");
    const byTag = new Map();
    for (const [path, item] of Object.entries(doc.paths)) {
      // HEAD beside GET is the GET without a body: not shown twice.
      const methods = Object.keys(item).filter((m) => !(m === "head" && item.get));
      const any = methods.length >= 6;
      for (const method of any ? [methods[0]] : methods) {
        const op = item[method];
        const tag = (op.tags || ["other"])[0];
        if (!byTag.has(tag)) byTag.set(tag, []);
        const shown = operation(doc, path, any ? "any" : method, op);
        if (any) shown.querySelector(".method").textContent = "ANY";
        byTag.get(tag).push(shown);
      }
    }
    const sections = [...byTag.entries()].sort().map(([tag, ops]) =>
      el("section", { class: "tag-section", id: "tag-" + tag }, el("h2", {}, tag), ...ops));
    $("api-ops").replaceChildren(...sections);
  }

  document.addEventListener("DOMContentLoaded", () => {
    fetch("../openapi.json", { cache: "no-store", credentials: "omit" })
      .then((r) => {
        if (!r.ok) throw new Error("GET /openapi.json: " + r.status);
        return r.json();
      })
      .then(render)
      .catch((err) => {
        $("api-error").textContent = err.message;
        $("api-error").hidden = false;
      });
  });
})();
