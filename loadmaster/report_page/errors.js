// Runs first: any later JavaScript error is shown on the page itself (#report-errors),
// not only in a console nobody opens.
"use strict";
(function () {
  const pending = [];

  function show(text) {
    const box = document.getElementById("report-errors");
    if (box === null) {
      pending.push(text);
      return;
    }
    const line = document.createElement("div");
    line.textContent = text;
    box.appendChild(line);
  }

  window.reportProblem = show;
  window.onerror = function (message, source, lineno) {
    show("JavaScript error: " + message + (lineno ? " (line " + lineno + ")" : ""));
    return false; // the console still gets it
  };
  window.addEventListener("unhandledrejection", (ev) => {
    show("JavaScript error: " + String(ev.reason));
  });
  document.addEventListener("DOMContentLoaded", () => {
    for (const text of pending.splice(0)) show(text);
  });
})();
