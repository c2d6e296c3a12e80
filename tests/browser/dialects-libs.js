// What dialects.mjs's pages load: yjs with y-webrtc, and peerjs, as an
// application would import them. esbuild bundles this file (and what it
// imports from node_modules) into one script for the page.
import * as Y from 'yjs';
import { WebrtcProvider } from 'y-webrtc';
import { Peer } from 'peerjs';

window.Y = Y;
window.WebrtcProvider = WebrtcProvider;
window.Peer = Peer;
