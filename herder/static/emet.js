/*
  emet: the herder's golem bootstrap. Include it in a webstrate:

      <script src="HERDER/"></script>

  In a normal browser it asks the herder to spawn the golem of this page's
  webstrate (the first segment of the page's path); one golem runs per
  webstrate, so every visitor may ask. Inside the golem (headless Chromium)
  it runs the code of the first element matching ".golem, #emet" once the
  page has loaded, with `emet` in scope (also `window.emet`):

    emet.herder                 the herder's URL
    emet.webstrate              this page's webstrate id
    emet.isGolem                true inside the golem
    emet.controlSocket(onEvent) opens the golem's control socket (with the
                                golem's key, from its page URL) and returns
                                the WebSocket; onEvent(event, socket) gets
                                {"Event": "minion-connected", "ID", "Type"} and
                                {"Event": "minion-disconnected", "ID"}
    emet.connectTo(minionId)    opens a data channel to one minion and returns
                                the WebSocket (binaryType "arraybuffer"); the
                                minion's frames arrive as they were sent, and
                                what you send reaches the minion unchanged
    emet.spawn(), emet.reset(), emet.kill()
                                ask the herder; each returns a Promise of the
                                JSON answer

  Example (in the webstrate):

      <pre class="golem">
        emet.controlSocket(function (event) {
          if (event.Event !== "minion-connected") return;
          var channel = emet.connectTo(event.ID);
          channel.onmessage = function (m) { channel.send(m.data); };  // echo
        });
      </pre>

  To reload the golem:  curl HERDER/golem/v1/reset/<webstrate>
  To stop it:           curl HERDER/golem/v1/kill/<webstrate>
*/
(function () {
  "use strict";
  var herder = "__HERDER_URL__";
  var socketBase = herder.replace(/^http/, "ws");

  function pageWebstrate() {
    var client = window.webstrate;
    if (client && typeof client.webstrateId === "string" && client.webstrateId) {
      return client.webstrateId;
    }
    var segment = location.pathname.split("/").filter(Boolean)[0] || "";
    try {
      return decodeURIComponent(segment);
    } catch (e) {
      return segment;
    }
  }

  // The herder opens a golem's page with its secret in the fragment
  // (#herder-golem-key=...), which the Webstrates server never sees; the
  // control socket and data channels present it. Read once, at load.
  function golemKey() {
    var found = /(?:^#|&)herder-golem-key=([^&]*)/.exec(location.hash);
    return found ? found[1] : "";
  }

  function withKey(url) {
    return key ? url + "?key=" + encodeURIComponent(key) : url;
  }

  var webstrateId = pageWebstrate();
  var key = golemKey();
  var isGolem =
    navigator.webdriver === true || /HeadlessChrome/.test(navigator.userAgent);

  function ask(verb) {
    return fetch(herder + "/golem/v1/" + verb + "/" + encodeURIComponent(webstrateId), {
      method: "POST",
      mode: "cors",
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) {
          throw new Error("golem " + verb + " failed: " + (body.error || response.status));
        }
        return body;
      });
    });
  }

  var emet = {
    herder: herder,
    webstrate: webstrateId,
    isGolem: isGolem,
    controlSocket: function (onEvent) {
      var socket = new WebSocket(
        withKey(socketBase + "/golem/v1/connect/" + encodeURIComponent(webstrateId))
      );
      socket.onmessage = function (message) {
        var event;
        try {
          event = JSON.parse(message.data);
        } catch (e) {
          return;
        }
        if (onEvent) onEvent(event, socket);
      };
      return socket;
    },
    connectTo: function (minionId) {
      var socket = new WebSocket(
        withKey(
          socketBase +
            "/golem/v1/connect-to/" +
            encodeURIComponent(webstrateId) +
            "/" +
            encodeURIComponent(minionId)
        )
      );
      socket.binaryType = "arraybuffer";
      return socket;
    },
    spawn: function () {
      return ask("spawn");
    },
    reset: function () {
      return ask("reset");
    },
    kill: function () {
      return ask("kill");
    },
  };
  window.emet = emet;

  if (!webstrateId) return;

  if (!isGolem) {
    emet.spawn().then(
      function (golem) {
        console.log("emet: golem running for " + webstrateId, golem);
      },
      function (error) {
        console.warn("emet: " + error.message);
      }
    );
    return;
  }

  var started = false;
  function rise() {
    if (started) return;
    started = true;
    var element = document.querySelector(".golem, #emet");
    if (!element) {
      console.warn("emet: no .golem or #emet element on this page");
      return;
    }
    new Function("emet", element.textContent)(emet);
  }

  var client = window.webstrate;
  if (client && typeof client.on === "function" && !client.loaded) {
    client.on("loaded", rise);
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", rise);
  } else {
    rise();
  }
})();
