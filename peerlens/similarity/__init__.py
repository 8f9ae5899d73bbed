"""From features to groups: the methods registry, clustering, embeddings and TF-IDF, point-in-time
clusterings, company latent profiles and the explanations of clusters."""
