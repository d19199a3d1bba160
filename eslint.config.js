// ESLint for the explorer page's script and its node tests: the recommended rules are the floor.
"use strict";

const js = require("@eslint/js");
const globals = require("globals");

module.exports = [
  js.configs.recommended,
  {
    files: ["mlflow_flux/explorer/static/**/*.js"],
    languageOptions: {ecmaVersion: 2022, sourceType: "script", globals: {...globals.browser}},
    rules: {"no-var": "error", "prefer-const": "error", "eqeqeq": "error", "strict": ["error", "global"]},
  },
  // flux-core.js is also what node's tests require(); explorer.js reads it as the global the page defines first.
  {files: ["mlflow_flux/explorer/static/flux-core.js"], languageOptions: {globals: {module: "writable"}}},
  {files: ["mlflow_flux/explorer/static/explorer.js"], languageOptions: {globals: {FluxCore: "readonly"}}},
  {
    files: ["tests/explorer/js/**/*.js", "eslint.config.js"],
    languageOptions: {ecmaVersion: 2022, sourceType: "commonjs", globals: {...globals.node}},
    rules: {"no-var": "error", "prefer-const": "error", "eqeqeq": "error"},
  },
];
