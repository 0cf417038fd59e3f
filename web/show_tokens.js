// Attention Align: shows the text a node returns as UI output ({"text": [...]}) on the node itself, as ComfyUI's
// own "Preview Any" does for its node: a read-only multiline widget that is filled when the node has run and is
// not saved with the workflow. Used by Show Tokens ("check before sampling").
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES = new Set(["AttentionAlignShowTokens"]);
const WIDGET = "shown_text";

app.registerExtension({
    name: "AttentionAlign.ShowText",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!NODES.has(nodeData.name)) return;
        const onNodeCreated = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
            onNodeCreated?.apply(this, arguments);
            const widget = ComfyWidgets["STRING"](this, WIDGET, ["STRING", { multiline: true }], app).widget;
            widget.element.readOnly = true;
            widget.element.placeholder = "runs when queued: tokens, subjects and groups appear here";
            widget.serialize = false;
        };
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            onExecuted?.apply(this, arguments);
            const widget = this.widgets?.find((w) => w.name === WIDGET);
            if (widget && message?.text) widget.value = [].concat(message.text).join("\n");
        };
    },
});
