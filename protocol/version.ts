/** kumo's version, as package.json gives it (a test keeps the two equal); every command prints it for --version. */
export const KUMO_VERSION = '0.1.0';
