/** The release of the controller and ambitctl; its own module so `ambitctl --version` loads nothing else. */
export const VERSION = '0.1.0';
