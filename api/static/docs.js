// /docs: Swagger UI over /openapi.json (loaded from this site only; no inline script).
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,          // never send the document to another site to validate it
    persistAuthorization: false, // the key stays in this tab's memory only
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
