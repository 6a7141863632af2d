//! phiguard collector (skeleton).
