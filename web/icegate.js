// icegate signaling client
export {};
